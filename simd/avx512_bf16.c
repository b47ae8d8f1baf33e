/*
 * avx512_bf16.c — prefill with f16 weights in bf16 arithmetic (vdpbf16ps).
 *
 * Built with AVX512_BF16 flags; reached only through the avx512bf16 table,
 * which dispatch.c offers when CPUID reports AVX512_BF16 (and everything
 * the avx512 table needs). That table is the avx512 one plus these two
 * entries.
 *
 * Why: with f16 weights, prefill is bound by fp32 FMA throughput (16
 * multiply-adds per instruction). vdpbf16ps does 32 per instruction, and
 * measured 2.6x the FMA rate on Zen 4. The price is precision. Weights
 * (11-bit f16 significands) and activations are rounded to bf16 (8 bits),
 * and products are summed in f32 — as AMX bf16 tiles would compute. Decode
 * (one token) is bound by memory, not arithmetic, and keeps the exact f16
 * kernel. LOUPE_ISA=avx512 keeps exact f16 arithmetic everywhere.
 *
 * Layout: a group of 16 weight rows x KC columns is packed on the stack as
 * (KC/2, 16) dwords. Each dword holds the bf16 pair (k, k+1) of one row, so
 * one 64-byte load feeds one vdpbf16ps against a broadcast activation pair.
 * Packing happens once per group pair and column chunk, and is reused by
 * every token of the batch.
 */
#include "avx512_bf16.h"

#include <immintrin.h>
#include <string.h>

#include "kernels.h"

#define LP_INLINE static inline __attribute__((always_inline))

#define BF_KC LP_BF16_KC
#define BF_MR 6   /* tokens per tile: 6 x 2 accumulators + 2 weights + 1 x */

/* n f32 -> bf16 (n % 32 tail handled with masks). */
static void f32_to_bf16(const float *x, uint16_t *y, int n) {
    int i = 0;
    for (; i + 32 <= n; i += 32) {
        const __m512bh b = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(x + i + 16), _mm512_loadu_ps(x + i));
        _mm512_storeu_si512(y + i, (__m512i)b);
    }
    for (; i < n; i += 16) {
        const int m = n - i < 16 ? n - i : 16;
        const __mmask16 k = (__mmask16)((1u << m) - 1);
        const __m256bh b = _mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(k, x + i));
        _mm256_mask_storeu_epi16(y + i, k, (__m256i)b);
    }
}

void lp_bf16_pack_group(const uint16_t *W, int n_in, int r, int n_rows, int k0, int kc,
                       uint32_t *P) {
    uint32_t rowbuf[16][BF_KC / 2]; /* (16, kc/2) bf16 pairs, row-major */
    for (int i = 0; i < 16; i++) {
        if (i >= n_rows) {
            memset(rowbuf[i], 0, sizeof rowbuf[i]);
            continue;
        }
        const uint16_t *w = W + (size_t)(r + i) * n_in + k0; // (kc)
        for (int k = 0; k < kc; k += 32) {
            const __m512 lo = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(w + k)));
            const __m512 hi = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(w + k + 16)));
            _mm512_storeu_si512(&rowbuf[i][k / 2], (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
        }
    }
    /* transpose: 16 dwords (one per row) per pair p */
    const __m512i idx = _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5,
                                                             4, 3, 2, 1, 0),
                                           _mm512_set1_epi32(BF_KC / 2));
    for (int p = 0; p < kc / 2; p++)
        _mm512_storeu_si512(P + 16 * p, _mm512_i32gather_epi32(idx, &rowbuf[0][p], 4));
}

/* One tile: TT tokens x NG groups over kc/2 pairs; acc is added to Y
 * (first = 1: stored) for rows < n_rows[g]. */
LP_INLINE void bf_tile(const int TT, const int NG, int kc, const uint32_t *const *xb,
                       const uint32_t *P0, const uint32_t *P1, float *Y, int ldy, int r,
                       const int *n_rows, int first) {
    __m512 acc[BF_MR][2];
    for (int a = 0; a < TT; a++)
        for (int n = 0; n < NG; n++) acc[a][n] = _mm512_setzero_ps();
    for (int p = 0; p < kc / 2; p++) {
        const __m512bh w0 = (__m512bh)_mm512_loadu_si512(P0 + 16 * p);
        const __m512bh w1 = (__m512bh)_mm512_loadu_si512(P1 + 16 * p);
#pragma GCC unroll 6
        for (int a = 0; a < TT; a++) {
            const __m512bh x = (__m512bh)_mm512_set1_epi32((int)xb[a][p]);
            acc[a][0] = _mm512_dpbf16_ps(acc[a][0], w0, x);
            if (NG == 2) acc[a][1] = _mm512_dpbf16_ps(acc[a][1], w1, x);
        }
    }
    for (int n = 0; n < NG; n++) {
        const __mmask16 m = (__mmask16)((1u << n_rows[n]) - 1);
        for (int a = 0; a < TT; a++) {
            float *y = Y + (size_t)a * ldy + r + 16 * n;
            __m512 v = acc[a][n];
            if (!first) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, y));
            _mm512_mask_storeu_ps(y, m, v);
        }
    }
}

/* Every token tile of one group pair and column chunk. */
static void bf_tokens(int T, int n_in, const uint16_t *Xb, int k0, int kc, const uint32_t *P0,
                      const uint32_t *P1, int NG, float *Y, int ldy, int r, const int *n_rows) {
    const uint32_t *xb[BF_MR];
    for (int t = 0; t < T; t += BF_MR) {
        const int TT = T - t < BF_MR ? T - t : BF_MR;
        for (int a = 0; a < TT; a++)
            xb[a] = (const uint32_t *)(const void *)(Xb + (size_t)(t + a) * n_in + k0);
        float *y = Y + (size_t)t * ldy;
        const int first = k0 == 0;
#define BF_CASE(tt)                                                                           \
    case tt:                                                                                  \
        if (NG == 2) bf_tile(tt, 2, kc, xb, P0, P1, y, ldy, r, n_rows, first);                \
        else bf_tile(tt, 1, kc, xb, P0, P1, y, ldy, r, n_rows, first);                        \
        break;
        switch (TT) {
            BF_CASE(6)
            BF_CASE(5)
            BF_CASE(4)
            BF_CASE(3)
            BF_CASE(2)
            BF_CASE(1)
        default: break;
        }
#undef BF_CASE
    }
}

/* Rows [r0, r1) in pairs of 16-row groups; each pair is packed one column
 * chunk at a time and swept by all T tokens. */
static void gemm_f16_bf16(int T, int n_in, const uint16_t *Xb, const uint16_t *W, float *Y,
                          int ldy, int r0, int r1) {
    _Alignas(64) uint32_t P[2][BF_KC / 2 * 16]; /* (kc/2, 16) per group */
    for (int r = r0; r < r1; r += 32) {
        const int left = r1 - r;
        const int NG = left > 16 ? 2 : 1;
        const int n_rows[2] = {left < 16 ? left : 16, left > 32 ? 16 : left - 16};
        for (int k0 = 0; k0 < n_in; k0 += BF_KC) {
            const int kc = n_in - k0 < BF_KC ? n_in - k0 : BF_KC;
            lp_bf16_pack_group(W, n_in, r, n_rows[0], k0, kc, P[0]);
            if (NG == 2) lp_bf16_pack_group(W, n_in, r + 16, n_rows[1], k0, kc, P[1]);
            bf_tokens(T, n_in, Xb, k0, kc, P[0], P[1], NG, Y, ldy, r, n_rows);
        }
    }
}

void lp_avx512bf16_fill(lp_kernels *k);
void lp_avx512bf16_fill(lp_kernels *k) {
    k->gemm_f16_bf16 = gemm_f16_bf16;
    k->f32_to_bf16 = f32_to_bf16;
}
