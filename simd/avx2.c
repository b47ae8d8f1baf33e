/*
 * avx2.c — kernels for x86-64 with AVX2 + FMA + F16C (Haswell, Zen and
 * later). Compiled with -mavx2 -mfma -mf16c; only reached after dispatch.c
 * has checked CPUID and XCR0.
 *
 * Matmuls work on tiles of a few tokens × a few weight rows so that each
 * loaded weight vector is used by several tokens (prefill) while the
 * single-token case (decode, a GEMV) streams each weight row exactly once.
 * Tails (n not a multiple of 8) use masked loads, never reading past the end.
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

LP_INLINE float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

LP_INLINE float hmax8(__m256 v) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* Lane mask selecting the first m lanes (0 <= m <= 8). */
LP_INLINE __m256i first_lanes(int m) {
    static const int32_t bits[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};
    return _mm256_loadu_si256((const __m256i *)(bits + 8 - m));
}

/* Loads min(m, 8) floats, zero-filling missing lanes. */
LP_INLINE __m256 ld(const float *p, int m) {
    return m >= 8 ? _mm256_loadu_ps(p) : _mm256_maskload_ps(p, first_lanes(m));
}

LP_INLINE void st(float *p, __m256 v, int m) {
    if (m >= 8) _mm256_storeu_ps(p, v);
    else _mm256_maskstore_ps(p, first_lanes(m), v);
}

/* Loads min(m, 8) fp16 values as floats, zero-filling missing lanes. */
LP_INLINE __m256 ld_h(const uint16_t *p, int m) {
    if (m >= 8) return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
    uint16_t buf[8] = {0};
    memcpy(buf, p, (size_t)(m > 0 ? m : 0) * sizeof *p);
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)buf));
}

/* ------------------------------------------------------ gemm f32 / f16 */

/* One step of a tile: acc[a][b] += x[a][i, i+m) * w[b][i, i+m). m = 8 is
 * the constant full-vector case; m < 8 the masked tail. TT tokens, RT
 * rows and F16 (weights are fp16) are constants at every call site. */
LP_INLINE void gemm_step(const int TT, const int RT, const int F16, const float *const *x,
                         const void *const *w, int i, int m, __m256 acc[3][4]) {
    __m256 wv[4];
    for_rows(b) wv[b] = F16 ? ld_h((const uint16_t *)w[b] + i, m) : ld((const float *)w[b] + i, m);
    for_tokens(a) {
        const __m256 xv = ld(x[a] + i, m);
        for_rows(b) acc[a][b] = _mm256_fmadd_ps(xv, wv[b], acc[a][b]);
    }
}

/* Y[t0+a, r0+b] for a < TT tokens, b < RT rows: 3 x 4 accumulators plus
 * 4 weight vectors fill the 16 ymm registers. In f16 decode each row also
 * prefetches the same offset RT rows on, which is what the next tile
 * reads: the hardware prefetcher stops at every 4 KB page. Xeon under KVM,
 * LOUPE_ISA=avx2: TinyLlama f16 decode +9-13%, GPT-2 +39-44%. */
LP_INLINE void gemm_tile(const int TT, const int RT, const int F16, int n_in, const float *X,
                         const void *W, float *Y, int ldy, int t0, int r0) {
    __m256 acc[3][4];
    const float *x[3];
    const void *w[4];
    const size_t esize = F16 ? sizeof(uint16_t) : sizeof(float);
    for_tokens(a) x[a] = X + (size_t)(t0 + a) * n_in;
    for_rows(b) w[b] = (const char *)W + (size_t)(r0 + b) * n_in * esize;
    for_tokens(a)
        for_rows(b) acc[a][b] = _mm256_setzero_ps();
    int i = 0;
    if (TT == 1 && F16) { /* decode: one line per row and step for the next tile */
        const size_t next = (size_t)RT * n_in * esize;
        for (; i + 32 <= n_in; i += 32) {
            for_rows(b) _mm_prefetch((const char *)w[b] + (size_t)i * esize + next, _MM_HINT_T0);
#pragma GCC unroll 4
            for (int k = 0; k < 32; k += 8) gemm_step(TT, RT, F16, x, w, i + k, 8, acc);
        }
    }
    for (; i + 8 <= n_in; i += 8) gemm_step(TT, RT, F16, x, w, i, 8, acc);
    if (i < n_in) gemm_step(TT, RT, F16, x, w, i, n_in - i, acc);
    for_tokens(a)
        for_rows(b) Y[(size_t)(t0 + a) * ldy + r0 + b] = hsum8(acc[a][b]);
}

/* Rows outer, tokens inner: a tile's 4 weight rows stay in L1/L2 while all
 * tokens pass over them; with T = 1 each row is streamed once. */
LP_INLINE void gemm_rows(const int F16, int T, int n_in, const float *X, const void *W,
                         float *Y, int ldy, int r0, int r1) {
    int r = r0;
    for (; r + 4 <= r1; r += 4) {
        int t = 0;
        for (; t + 3 <= T; t += 3) gemm_tile(3, 4, F16, n_in, X, W, Y, ldy, t, r);
        for (; t < T; t++) gemm_tile(1, 4, F16, n_in, X, W, Y, ldy, t, r);
    }
    for (; r < r1; r++) {
        int t = 0;
        for (; t + 3 <= T; t += 3) gemm_tile(3, 1, F16, n_in, X, W, Y, ldy, t, r);
        for (; t < T; t++) gemm_tile(1, 1, F16, n_in, X, W, Y, ldy, t, r);
    }
}

static void gemm_f32(int T, int n_in, const float *X, const float *W, float *Y,
                     int ldy, int r0, int r1) {
    gemm_rows(0, T, n_in, X, W, Y, ldy, r0, r1);
}

static void gemm_f16(int T, int n_in, const float *X, const uint16_t *W, float *Y,
                     int ldy, int r0, int r1) {
    gemm_rows(1, T, n_in, X, W, Y, ldy, r0, r1);
}

/* -------------------------------------------------------------- gemm q8 */

/* int8 × int8 products through vpmaddubsw, which needs one unsigned
 * operand: |w| * (x with w's sign) equals w * x. |w| <= 127 (and pairs of
 * products <= 2*127*128) so the int16 pair sums cannot saturate. */
LP_INLINE __m256i dot_q8_lanes(__m256i w_abs, __m256i w, __m256i x) {
    const __m256i p16 = _mm256_maddubs_epi16(w_abs, _mm256_sign_epi8(x, w));
    return _mm256_madd_epi16(p16, _mm256_set1_epi16(1)); /* 8 int32 partial sums */
}

LP_INLINE void tile_q8(const int TT, const int RT, int nb, const lp_block_q8 *X,
                       const lp_block_q8 *W, float *Y, int ldy, int t0, int r0) {
    __m256 acc[4][4];
    const lp_block_q8 *x[4], *w[4];
    for_tokens(a) x[a] = X + (size_t)(t0 + a) * nb;
    for_rows(b) w[b] = W + (size_t)(r0 + b) * nb;
    for_tokens(a)
        for_rows(b) acc[a][b] = _mm256_setzero_ps();
    for (int k = 0; k < nb; k++) {
        __m256i wq[4], wa[4];
        float dw[4];
        for_rows(b) {
            wq[b] = _mm256_loadu_si256((const __m256i *)w[b][k].qs);
            wa[b] = _mm256_sign_epi8(wq[b], wq[b]);
            dw[b] = _cvtsh_ss(w[b][k].d);
        }
        for_tokens(a) {
            const __m256i xq = _mm256_loadu_si256((const __m256i *)x[a][k].qs);
            const float dx = _cvtsh_ss(x[a][k].d);
            for_rows(b) {
                const __m256 s = _mm256_cvtepi32_ps(dot_q8_lanes(wa[b], wq[b], xq));
                acc[a][b] = _mm256_fmadd_ps(s, _mm256_set1_ps(dx * dw[b]), acc[a][b]);
            }
        }
    }
    for_tokens(a)
        for_rows(b) Y[(size_t)(t0 + a) * ldy + r0 + b] = hsum8(acc[a][b]);
}

static void gemm_q8(int T, int n_in, const lp_block_q8 *Xq, const lp_block_q8 *W,
                    float *Y, int ldy, int r0, int r1) {
    const int nb = n_in / LP_QK8;
    int r = r0;
    if (T == 1) { /* decode: 4 independent rows in flight */
        for (; r + 4 <= r1; r += 4) tile_q8(1, 4, nb, Xq, W, Y, ldy, 0, r);
        for (; r < r1; r++) tile_q8(1, 1, nb, Xq, W, Y, ldy, 0, r);
        return;
    }
    for (; r + 2 <= r1; r += 2) {
        int t = 0;
        for (; t + 4 <= T; t += 4) tile_q8(4, 2, nb, Xq, W, Y, ldy, t, r);
        for (; t < T; t++) tile_q8(1, 2, nb, Xq, W, Y, ldy, t, r);
    }
    for (; r < r1; r++) {
        int t = 0;
        for (; t + 4 <= T; t += 4) tile_q8(4, 1, nb, Xq, W, Y, ldy, t, r);
        for (; t < T; t++) tile_q8(1, 1, nb, Xq, W, Y, ldy, t, r);
    }
}

/* ------------------------------------------------------ gemm q8 packed */

/* LP_Q8P (quant/blocks.h) without VNNI. A 32-byte load holds 4 k of 8
 * rows (half a group). The stored bytes are q + 128 (0..255), and vpmaddubsw
 * of those by x could saturate int16 (255 * 127 * 2 > 32767), so each load
 * is flipped back to signed q (xor 0x80) and multiplied as |q| times x with
 * q's sign: a pair of products stays within 2 * 128 * 127. vpmaddwd with
 * ones sums each row's pairs into one int32 lane. The +128 is undone by the
 * flip, so corr is not needed. Tiles: TT tokens x NS slices of 8 rows. */
#define Q8P_MR 4 /* tokens per prefill tile (one half): 4 x (int32 + f32) + 7 ymm */
#define Q8P_DECODE_PF 1024 /* bytes ahead a decode stream prefetches */

/* Sums of 4 products w * x per row, one int32 lane per row. */
LP_INLINE __m256i dot4_rows(__m256i w_abs, __m256i w, __m256i xb) {
    const __m256i p16 = _mm256_maddubs_epi16(w_abs, _mm256_sign_epi8(xb, w));
    return _mm256_madd_epi16(p16, _mm256_set1_epi16(1));
}

/* Broadcasts 4 activation bytes as one int32 (memcpy: any alignment). */
LP_INLINE __m256i bcast4(const int8_t *p) {
    int32_t v;
    memcpy(&v, p, sizeof v);
    return _mm256_set1_epi32(v);
}

#define for_slice(h) _Pragma("GCC unroll 4") for (int h = 0; h < NS; h++)

/* Tokens [t0, t0+TT) x NS slices of 8 rows (slice = half a group). Slice
 * u = 2g + half is rows 16g + 8 half ..+7; the tile's slices start at u0,
 * and when they span two groups the second is gs groups after the first. */
LP_INLINE void q8p_tile(const int TT, const int NS, int n_in, const lp_q8_act *X,
                        const uint8_t *W, int n_out, float *Y, int ldy, int t0, int u0, int gs) {
    const int nb = n_in / LP_QK8;
    const uint8_t *qs[4], *d[4]; // (nb, 8, 64) and (nb, 32) seen from slice h
    int row[4];
    const int8_t *xq[Q8P_MR];    // (n_in) each
    const float *xd[Q8P_MR];     // (nb) each
    __m256 acc[Q8P_MR][4];
    for_slice(h) {
        const int g = u0 / 2 + (u0 % 2 + h) / 2 * gs, half = (u0 + h) % 2;
        const uint8_t *grp = W + (size_t)g * LP_Q8P_GROUP_BYTES(n_in);
        qs[h] = grp + (size_t)nb * 32 + 32 * half;
        d[h] = grp + 16 * half;
        row[h] = g * LP_Q8P_ROWS + 8 * half;
        if (TT == 1 && half == 0) /* decode: fetch the scales now, the values stream after them */
            for (int i = 0; i < nb * 32; i += 64) _mm_prefetch((const char *)grp + i, _MM_HINT_T0);
    }
    for_tokens(a) {
        xq[a] = X->qs + (size_t)(t0 + a) * n_in;
        xd[a] = X->d + (size_t)(t0 + a) * nb;
        for_slice(h) acc[a][h] = _mm256_setzero_ps();
    }
    const __m256i flip = _mm256_set1_epi8((char)0x80);
    for (int b = 0; b < nb; b++) {
        __m256i ai[Q8P_MR][4];
        if (TT == 1) /* decode: each group's lines two blocks ahead (avx512.c's gemv_q8p) */
            for_slice(h) if ((u0 + h) % 2 == 0) for (int j = 0; j < 8; j++) _mm_prefetch(
                (const char *)qs[h] + (size_t)b * 512 + Q8P_DECODE_PF + 64 * j, _MM_HINT_T0);
        for_tokens(a) for_slice(h) ai[a][h] = _mm256_setzero_si256();
        /* not unrolled: GCC would re-associate the 8 sums per accumulator
         * into trees of products that are all live at once (spills) */
#pragma GCC unroll 1
        for (int j = 0; j < 8; j++) {
            __m256i w[4], wa[4];
            for_slice(h) {
                const __m256i raw = _mm256_loadu_si256((const __m256i *)(qs[h] + (size_t)b * 512 + 64 * j));
                w[h] = _mm256_xor_si256(raw, flip);
                wa[h] = _mm256_abs_epi8(w[h]);
            }
            for_tokens(a) {
                const __m256i xb = bcast4(xq[a] + 32 * b + 4 * j);
                for_slice(h) ai[a][h] = _mm256_add_epi32(ai[a][h], dot4_rows(wa[h], w[h], xb));
            }
        }
        for_slice(h) {
            const __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(d[h] + 32 * b)));
            for_tokens(a) {
                const __m256 sc = _mm256_mul_ps(dw, _mm256_set1_ps(xd[a][b]));
                acc[a][h] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(ai[a][h]), sc, acc[a][h]);
            }
        }
    }
    for_slice(h) {
        const int rows = n_out - row[h]; /* < 8: the last group */
        if (rows <= 0) continue;
        for_tokens(a) st(Y + (size_t)(t0 + a) * ldy + row[h], acc[a][h], rows);
    }
}

static void gemm_q8p(int T, int n_in, const lp_q8_act *X, const uint8_t *W, int n_out,
                     float *Y, int ldy, int g0, int g1) {
    if (T == 1) { /* decode: two long sequential streams, as in avx512.c's gemv_q8p */
        const int q = (g1 - g0) / 2;
        for (int k = 0; k < q; k++) q8p_tile(1, 4, n_in, X, W, n_out, Y, ldy, 0, 2 * (g0 + k), q);
        if (g0 + 2 * q < g1) q8p_tile(1, 2, n_in, X, W, n_out, Y, ldy, 0, 2 * (g1 - 1), 1);
        return;
    }
    for (int g = g0; g < g1; g++)
        for (int u = 2 * g; u < 2 * g + 2; u++) { /* prefill: half a group stays in L1 */
            int t = 0;
            for (; t + Q8P_MR <= T; t += Q8P_MR) q8p_tile(Q8P_MR, 1, n_in, X, W, n_out, Y, ldy, t, u, 1);
            switch (T - t) {
            case 3: q8p_tile(3, 1, n_in, X, W, n_out, Y, ldy, t, u, 1); break;
            case 2: q8p_tile(2, 1, n_in, X, W, n_out, Y, ldy, t, u, 1); break;
            case 1: q8p_tile(1, 1, n_in, X, W, n_out, Y, ldy, t, u, 1); break;
            default: break;
            }
        }
}

/* Rounds half away from zero exactly like roundf: truncate, then add 1
 * when the dropped fraction (computed exactly) is >= 0.5. */
LP_INLINE __m256 round_away(__m256 v) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    const __m256 a = _mm256_andnot_ps(sign, v);
    __m256 t = _mm256_round_ps(a, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
    const __m256 up = _mm256_cmp_ps(_mm256_sub_ps(a, t), _mm256_set1_ps(0.5f), _CMP_GE_OQ);
    t = _mm256_add_ps(t, _mm256_and_ps(up, _mm256_set1_ps(1.0f)));
    return _mm256_or_ps(t, _mm256_and_ps(sign, v));
}

/* Bit-identical to the scalar quantizer: same fp32 d, same x * (1/d). */
void lp_avx2_quantize_q8(const float *x, lp_block_q8 *y, int n) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    for (int k = 0; k < n / LP_QK8; k++) {
        const float *xb = x + (size_t)k * LP_QK8; // (32)
        __m256 v[4], amax = _mm256_setzero_ps();
        for (int j = 0; j < 4; j++) {
            v[j] = _mm256_loadu_ps(xb + 8 * j);
            amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign, v[j]));
        }
        const float d = hmax8(amax) / 127.0f;
        const float id = lp_q8_inverse(d);
        y[k].d = _cvtss_sh(d, _MM_FROUND_TO_NEAREST_INT);
        __m256i q[4];
        for (int j = 0; j < 4; j++)
            q[j] = _mm256_cvttps_epi32(round_away(_mm256_mul_ps(v[j], _mm256_set1_ps(id))));
        /* packs work per 128-bit lane; the permute restores element order */
        __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]),
                                       _mm256_packs_epi32(q[2], q[3]));
        p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256((__m256i *)y[k].qs, p);
    }
}

/* Bit-identical to the scalar twin: same fp32 d = amax / 127, same
 * x * (1/d), same rounding; corr from the exact int32 sum. */
static void quantize_q8a(const float *x, int n, int8_t *qs, float *d, int32_t *corr) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    for (int k = 0; k < n / LP_QK8; k++) {
        const float *xb = x + (size_t)k * LP_QK8; // (32)
        __m256 v[4], amax = _mm256_setzero_ps(), finite = _mm256_castsi256_ps(_mm256_set1_epi32(-1));
        for (int j = 0; j < 4; j++) {
            v[j] = _mm256_loadu_ps(xb + 8 * j);
            amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign, v[j]));
            finite = _mm256_and_ps(finite, _mm256_cmp_ps(_mm256_andnot_ps(sign, v[j]),
                                                         _mm256_set1_ps(INFINITY), _CMP_LT_OQ));
        }
        if (_mm256_movemask_ps(finite) != 0xff) { /* NaN or inf */
            lp_q8a_nonfinite(qs + (size_t)k * LP_QK8, &d[k], &corr[k]);
            continue;
        }
        d[k] = hmax8(amax) / 127.0f;
        const __m256 id = _mm256_set1_ps(lp_q8_inverse(d[k]));
        __m256i q[4];
        for (int j = 0; j < 4; j++) q[j] = _mm256_cvttps_epi32(round_away(_mm256_mul_ps(v[j], id)));
        const __m256i sum = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
        __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(sum), _mm256_extracti128_si256(sum, 1));
        s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4e));
        s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xb1));
        corr[k] = -128 * _mm_cvtsi128_si32(s4);
        /* packs work per 128-bit lane; the permute restores element order */
        __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
        p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256((__m256i *)(qs + (size_t)k * LP_QK8), p);
    }
}

/* ----------------------------------------------------------- vector ops */

static float dot_f32(const float *a, const float *b, int n) {
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    __m256 s2 = _mm256_setzero_ps(), s3 = _mm256_setzero_ps();
    int i = 0;
    for (; i + 32 <= n; i += 32) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
        s2 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 16), _mm256_loadu_ps(b + i + 16), s2);
        s3 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 24), _mm256_loadu_ps(b + i + 24), s3);
    }
    for (; i < n; i += 8) s0 = _mm256_fmadd_ps(ld(a + i, n - i), ld(b + i, n - i), s0);
    return hsum8(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
}

void lp_avx2_rmsnorm(float *out, const float *x, const float *w, int n, float eps) {
    __m256 ss = _mm256_setzero_ps();
    for (int i = 0; i < n; i += 8) {
        const __m256 v = ld(x + i, n - i);
        ss = _mm256_fmadd_ps(v, v, ss);
    }
    const __m256 inv = _mm256_set1_ps(1.0f / sqrtf(hsum8(ss) / (float)n + eps));
    for (int i = 0; i < n; i += 8)
        st(out + i, _mm256_mul_ps(_mm256_mul_ps(ld(x + i, n - i), inv), ld(w + i, n - i)),
           n - i);
}

void lp_avx2_layernorm(float *out, const float *x, const float *w, const float *b, int n,
                       float eps) {
    __m256 s = _mm256_setzero_ps();
    for (int i = 0; i < n; i += 8) s = _mm256_add_ps(s, ld(x + i, n - i));
    const float mean = hsum8(s) / (float)n;
    const __m256 mv = _mm256_set1_ps(mean);
    __m256 var = _mm256_setzero_ps();
    for (int i = 0; i < n; i += 8) {
        /* masked-off lanes load 0 and would add mean^2: zero them again */
        __m256 dv = _mm256_sub_ps(ld(x + i, n - i), mv);
        if (n - i < 8) dv = _mm256_and_ps(dv, _mm256_castsi256_ps(first_lanes(n - i)));
        var = _mm256_fmadd_ps(dv, dv, var);
    }
    const __m256 inv = _mm256_set1_ps(1.0f / sqrtf(hsum8(var) / (float)n + eps));
    for (int i = 0; i < n; i += 8) {
        const int m = n - i;
        __m256 y = _mm256_mul_ps(_mm256_mul_ps(_mm256_sub_ps(ld(x + i, m), mv), inv),
                                 ld(w + i, m));
        if (b) y = _mm256_add_ps(y, ld(b + i, m));
        st(out + i, y, m);
    }
}

static void softmax(float *x, int n) {
    __m256 mx = _mm256_set1_ps(-INFINITY);
    for (int i = 0; i < n; i += 8) {
        __m256 v = ld(x + i, n - i);
        if (n - i < 8) /* missing lanes must not win the max */
            v = _mm256_blendv_ps(_mm256_set1_ps(-INFINITY), v,
                                 _mm256_castsi256_ps(first_lanes(n - i)));
        mx = _mm256_max_ps(mx, v);
    }
    const __m256 maxv = _mm256_set1_ps(hmax8(mx));
    __m256 sum = _mm256_setzero_ps();
    for (int i = 0; i < n; i += 8) {
        const int m = n - i;
        __m256 e = Sleef_expf8_u10avx2(_mm256_sub_ps(ld(x + i, m), maxv));
        if (m < 8) e = _mm256_and_ps(e, _mm256_castsi256_ps(first_lanes(m)));
        sum = _mm256_add_ps(sum, e);
        st(x + i, e, m);
    }
    const __m256 inv = _mm256_set1_ps(1.0f / hsum8(sum));
    for (int i = 0; i < n; i += 8) st(x + i, _mm256_mul_ps(ld(x + i, n - i), inv), n - i);
}

/* 0.5 v (1 + tanh(u)) = v / (1 + exp(-2u)): one exp and a division cost
 * less than SLEEF's tanh, and nothing cancels for v < 0. exp overflows to
 * inf for u < -44, giving v / inf = -0, the limit. */
static void gelu_tanh(float *x, int n) {
    const __m256 k2 = _mm256_set1_ps(-2.0f * 0.7978845608028654f), c = _mm256_set1_ps(0.044715f);
    const __m256 one = _mm256_set1_ps(1.0f);
    for (int i = 0; i < n; i += 8) {
        const __m256 v = ld(x + i, n - i);
        const __m256 m2u = _mm256_mul_ps(k2, _mm256_fmadd_ps(_mm256_mul_ps(c, v),
                                                             _mm256_mul_ps(v, v), v));
        const __m256 e = Sleef_expf8_u10avx2(m2u);
        st(x + i, _mm256_div_ps(v, _mm256_add_ps(one, e)), n - i);
    }
}

static void gelu_erf(float *x, int n) {
    const __m256 r2 = _mm256_set1_ps(0.7071067811865476f);
    const __m256 half = _mm256_set1_ps(0.5f), one = _mm256_set1_ps(1.0f);
    for (int i = 0; i < n; i += 8) {
        const __m256 v = ld(x + i, n - i);
        const __m256 e = Sleef_erff8_u10avx2(_mm256_mul_ps(v, r2));
        st(x + i, _mm256_mul_ps(_mm256_mul_ps(half, v), _mm256_add_ps(one, e)), n - i);
    }
}

static void swiglu(float *out, const float *gate, const float *up, int n) {
    const __m256 one = _mm256_set1_ps(1.0f), neg = _mm256_set1_ps(-0.0f);
    for (int i = 0; i < n; i += 8) {
        const int m = n - i;
        const __m256 g = ld(gate + i, m);
        const __m256 e = Sleef_expf8_u10avx2(_mm256_xor_ps(g, neg)); /* exp(-g) */
        const __m256 silu = _mm256_div_ps(g, _mm256_add_ps(one, e));
        st(out + i, _mm256_mul_ps(silu, ld(up + i, m)), m);
    }
}

void lp_avx2_rope(float *x, int n_heads, int head_dim, int rot_dim, const float *cs,
                  const float *sn, int neox) {
    const int half = rot_dim / 2;
    for (int h = 0; h < n_heads; h++) {
        float *v = x + (size_t)h * head_dim; // (head_dim)
        if (neox) { /* pairs (i, i+half): plain elementwise on two halves */
            for (int i = 0; i < half; i += 8) {
                const int m = half - i;
                const __m256 a = ld(v + i, m), b = ld(v + half + i, m);
                const __m256 c = ld(cs + i, m), s = ld(sn + i, m);
                st(v + i, _mm256_fmsub_ps(a, c, _mm256_mul_ps(b, s)), m);
                st(v + half + i, _mm256_fmadd_ps(a, s, _mm256_mul_ps(b, c)), m);
            }
            continue;
        }
        /* pairs (2i, 2i+1): 4 pairs per vector; even lanes a*c - b*s,
         * odd lanes b*c + a*s, which is fmaddsub(v, c, swap(v) * s) */
        const __m256i dup = _mm256_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3);
        int i = 0;
        for (; i + 4 <= half; i += 4) {
            const __m256 vv = _mm256_loadu_ps(v + 2 * i);
            const __m256 c = _mm256_permutevar8x32_ps(_mm256_castps128_ps256(_mm_loadu_ps(cs + i)), dup);
            const __m256 s = _mm256_permutevar8x32_ps(_mm256_castps128_ps256(_mm_loadu_ps(sn + i)), dup);
            const __m256 sw = _mm256_permute_ps(vv, 0xB1);
            _mm256_storeu_ps(v + 2 * i, _mm256_fmaddsub_ps(vv, c, _mm256_mul_ps(sw, s)));
        }
        for (; i < half; i++) {
            const float a = v[2 * i], b = v[2 * i + 1];
            v[2 * i] = a * cs[i] - b * sn[i];
            v[2 * i + 1] = a * sn[i] + b * cs[i];
        }
    }
}

void lp_avx2_add(float *y, const float *x, int n) {
    for (int i = 0; i < n; i += 8) st(y + i, _mm256_add_ps(ld(y + i, n - i), ld(x + i, n - i)), n - i);
}

void lp_avx2_f16_to_f32(const uint16_t *x, float *y, int n) {
    for (int i = 0; i < n; i += 8) st(y + i, ld_h(x + i, n - i), n - i);
}

void lp_avx2_f32_to_f16(const float *x, uint16_t *y, int n) {
    int i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(y + i),
                         _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT));
    if (i < n) {
        uint16_t buf[8];
        _mm_storeu_si128((__m128i *)buf, _mm256_cvtps_ph(ld(x + i, n - i), _MM_FROUND_TO_NEAREST_INT));
        memcpy(y + i, buf, (size_t)(n - i) * sizeof *y);
    }
}

/* ------------------------------------------------------------ attention */

/* dot(q, k) and out += p * v over head_dim, for f32 or f16 caches; F16 is
 * a constant at each call so the type test disappears from the loop. */
LP_INLINE __m256 ld_kv(const void *base, size_t idx, int m, const int F16) {
    return F16 ? ld_h((const uint16_t *)base + idx, m) : ld((const float *)base + idx, m);
}

/* Sums of four vectors: lane u of the result is hsum8(v[u]). */
LP_INLINE __m128 hsum8x4(__m256 v0, __m256 v1, __m256 v2, __m256 v3) {
    const __m256 s = _mm256_hadd_ps(_mm256_hadd_ps(v0, v1), _mm256_hadd_ps(v2, v3));
    return _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
}

/* Decode: the vector half of attn_block.h's lp_attn_decode. Scores four
 * keys at a time: four independent FMA chains, one reduction. */
LP_INLINE void decode_scores_kv(const lp_attn_args *a, int h, const float *q, int n_keys,
                                float *S, const int F16) {
    const int hd = a->head_dim;
    const size_t kl = a->kv_row_ld, k0 = lp_attn_kv_off(a, h);
    const __m128 scale = _mm_set1_ps(a->scale);
    int j = 0;
    for (; j + 4 <= n_keys; j += 4) {
        __m256 s[4];
        _Pragma("GCC unroll 4") for (int u = 0; u < 4; u++) s[u] = _mm256_setzero_ps();
        for (int i = 0; i < hd; i += 8) {
            const __m256 qi = ld(q + i, hd - i);
            _Pragma("GCC unroll 4") for (int u = 0; u < 4; u++)
                s[u] = _mm256_fmadd_ps(qi, ld_kv(a->k, k0 + (j + u) * kl + i, hd - i, F16), s[u]);
        }
        _mm_storeu_ps(S + j, _mm_mul_ps(hsum8x4(s[0], s[1], s[2], s[3]), scale));
    }
    for (; j < n_keys; j++) {
        __m256 s0 = _mm256_setzero_ps();
        for (int i = 0; i < hd; i += 8)
            s0 = _mm256_fmadd_ps(ld(q + i, hd - i), ld_kv(a->k, k0 + j * kl + i, hd - i, F16), s0);
        S[j] = hsum8(s0) * a->scale;
    }
}

/* out[d0, d0 + 8*NA) over the keys: NA register accumulators, key by key,
 * so the values are read once, in order. */
LP_INLINE void decode_values_part(const lp_attn_args *a, int h, const float *S, int n_keys,
                                  float *out, int d0, const int NA, const int F16) {
    const int hd = a->head_dim;
    const size_t kl = a->kv_row_ld, v0 = lp_attn_kv_off(a, h) + d0;
    __m256 o[8];
    _Pragma("GCC unroll 8") for (int u = 0; u < NA; u++) o[u] = _mm256_setzero_ps();
    for (int j = 0; j < n_keys; j++) {
        const __m256 p = _mm256_set1_ps(S[j]);
        _Pragma("GCC unroll 8") for (int u = 0; u < NA; u++)
            o[u] = _mm256_fmadd_ps(p, ld_kv(a->v, v0 + j * kl + 8 * u, hd - d0 - 8 * u, F16), o[u]);
    }
    _Pragma("GCC unroll 8") for (int u = 0; u < NA; u++) st(out + d0 + 8 * u, o[u], hd - d0 - 8 * u);
}

/* Widest slices first (64 dims, then halves): a head_dim that is not a
 * multiple of 64 takes a few more passes over the values. */
LP_INLINE void decode_values_kv(const lp_attn_args *a, int h, const float *S, int n_keys,
                                float *out, const int F16) {
    for (int d0 = 0; d0 < a->head_dim;) {
        const int left = (a->head_dim - d0 + 7) / 8; /* vectors */
        const int na = left >= 8 ? 8 : left >= 4 ? 4 : left >= 2 ? 2 : 1;
        if (na == 8) decode_values_part(a, h, S, n_keys, out, d0, 8, F16);
        else if (na == 4) decode_values_part(a, h, S, n_keys, out, d0, 4, F16);
        else if (na == 2) decode_values_part(a, h, S, n_keys, out, d0, 2, F16);
        else decode_values_part(a, h, S, n_keys, out, d0, 1, F16);
        d0 += 8 * na;
    }
}

static void decode_scores(const lp_attn_args *a, int h, const float *q, int n, float *S) {
    if (a->kv_type == LP_F16) decode_scores_kv(a, h, q, n, S, 1);
    else decode_scores_kv(a, h, q, n, S, 0);
}

static void decode_values(const lp_attn_args *a, int h, const float *S, int n, float *out) {
    if (a->kv_type == LP_F16) decode_values_kv(a, h, S, n, out, 1);
    else decode_values_kv(a, h, S, n, out, 0);
}

static const lp_attn_decode_ops decode_ops = {decode_scores, decode_values, softmax};

/* Prefill: 8 queries at a time, one per lane: the vector half of
 * attn_block.h's blocked kernel. */
/* Rows j0..j0+rows-1 of a K or V cache into b->C, zero beyond the head's
 * columns and beyond b->n_keys. */
static void attn8_load_chunk(const lp_attn_block *b, const void *cache, int j0, int rows) {
    const int f16 = b->a->kv_type == LP_F16;
    for (int r = 0; r < rows; r++) {
        float *dst = b->C + (size_t)r * b->hdp; // (hdp)
        const size_t src = (size_t)(j0 + r) * b->kv_ld + b->kv_off;
        for (int i = 0; i < b->hdp; i += 8) {
            const int m = j0 + r < b->n_keys ? b->hd - i : 0;
            const __m256 v = m <= 0 ? _mm256_setzero_ps()
                             : f16  ? ld_h((const uint16_t *)cache + src + i, m)
                                    : ld((const float *)cache + src + i, m);
            _mm256_storeu_ps(dst + i, v);
        }
    }
}

/* S[j0 .. j0+rows) for the keys in b->K; -inf where a lane's query comes
 * before the key. rows % 4 == 0. */
static void attn8_scores(const lp_attn_block *b, int j0, int rows) {
    const int hd = b->hd, hdp = b->hdp;
    const __m256 scale = _mm256_set1_ps(b->a->scale), ninf = _mm256_set1_ps(-INFINITY);
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const int last_common = b->a->pos0 + b->t0; /* every lane sees keys <= this */
    for (int r = 0; r < rows; r += 4) {
        const float *k = b->K + (size_t)r * hdp; // (4, hdp)
        __m256 acc[4];
        _Pragma("GCC unroll 4") for (int u = 0; u < 4; u++) acc[u] = _mm256_setzero_ps();
        for (int i = 0; i < hd; i++) {
            const __m256 q = _mm256_loadu_ps(b->Qt + (size_t)i * 8);
            _Pragma("GCC unroll 4") for (int u = 0; u < 4; u++)
                acc[u] = _mm256_fmadd_ps(_mm256_broadcast_ss(k + u * hdp + i), q, acc[u]);
        }
        _Pragma("GCC unroll 4") for (int u = 0; u < 4; u++) {
            const int late = j0 + r + u - last_common; /* lanes < late can't see the key */
            const __m256 sees = _mm256_castsi256_ps(_mm256_cmpgt_epi32(lane, _mm256_set1_epi32(late - 1)));
            const __m256 s = _mm256_blendv_ps(ninf, _mm256_mul_ps(acc[u], scale), sees);
            _mm256_storeu_ps(b->S + (size_t)(j0 + r + u) * 8, s);
        }
    }
}

/* S[j] = exp(S[j] - max_j S) over n keys (8 lanes); lane-wise sums. */
static void attn8_softmax_lanes(float *S, int n, int lanes, float *sum_out) {
    (void)lanes;
    __m256 mx = _mm256_set1_ps(-INFINITY);
    for (int j = 0; j < n; j++) mx = _mm256_max_ps(mx, _mm256_loadu_ps(S + (size_t)j * 8));
    __m256 sum = _mm256_setzero_ps();
    for (int j = 0; j < n; j++) {
        const __m256 e = Sleef_expf8_u10avx2(_mm256_sub_ps(_mm256_loadu_ps(S + (size_t)j * 8), mx));
        _mm256_storeu_ps(S + (size_t)j * 8, e);
        sum = _mm256_add_ps(sum, e);
    }
    _mm256_storeu_ps(sum_out, sum);
}

/* Ot += V^T P over the keys j0..j0+rows-1 in b->K. */
static void attn8_values(const lp_attn_block *b, int j0, int rows) {
    const int hdp = b->hdp;
    for (int d0 = 0; d0 < hdp; d0 += 8) {
        float *o = b->Ot + (size_t)d0 * 8; // (8, 8)
        __m256 acc[8];
        _Pragma("GCC unroll 8") for (int u = 0; u < 8; u++) acc[u] = _mm256_loadu_ps(o + u * 8);
        for (int r = 0; r < rows; r++) {
            const __m256 p = _mm256_loadu_ps(b->S + (size_t)(j0 + r) * 8);
            const float *v = b->K + (size_t)r * hdp + d0; // (8)
            _Pragma("GCC unroll 8") for (int u = 0; u < 8; u++)
                acc[u] = _mm256_fmadd_ps(_mm256_broadcast_ss(v + u), p, acc[u]);
        }
        _Pragma("GCC unroll 8") for (int u = 0; u < 8; u++) _mm256_storeu_ps(o + u * 8, acc[u]);
    }
}

static const lp_attn_block_ops attn8_ops = {attn8_load_chunk, attn8_scores, attn8_softmax_lanes,
                                             attn8_values};

/* One query at a time below LP_ATTN_MIN_T queries (decode), else blocked. */
void lp_avx2_attention(const lp_attn_args *a, int h0, int h1) {
    if (a->T < LP_ATTN_MIN_T)
        lp_attn_decode(a, h0, h1, &decode_ops);
    else
        for (int h = h0; h < h1; h++) lp_attn_head_blocked(a, h, 8, &attn8_ops);
}

/* ---------------------------------------------------------------- table */

const lp_kernels lp_kernels_avx2 = {
    .name = "avx2",
    .gemm_f32 = gemm_f32,
    .gemm_f16 = gemm_f16,
    .gemm_q8 = gemm_q8,
    .quantize_q8 = lp_avx2_quantize_q8,
    .gemm_q8p = gemm_q8p,
    .quantize_q8a = quantize_q8a,
    .attention = lp_avx2_attention,
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
