/*
 * neon.c — kernels for AArch64 Advanced SIMD (every armv8-a CPU).
 *
 * The file is compiled for baseline armv8-a. The kernels that need the
 * armv8.2 dot-product extension (sdot, for the int8 matmuls gemm_q8 and
 * gemm_q8p) are compiled for it alone through a target pragma and live in a
 * second table, lp_kernels_neon_dot, which dispatch.c picks only when
 * getauxval(AT_HWCAP) reports ASIMDDP. fp16 <-> fp32 conversion (fcvtl/fcvtn) is baseline.
 *
 * NEON has no masked loads: tails go through a small zero-padded buffer.
 */
#include <arm_neon.h>
#include <math.h>
#include <sleef.h>
#include <string.h>

#include "attn_block.h"
#include "kernels.h"

#define LP_INLINE static inline __attribute__((always_inline))
/* Loops over the TT tokens / RT rows of a tile: constant trip counts, fully
 * unrolled so that acc[][] stays in registers. */
#define for_tokens(a) _Pragma("GCC unroll 4") for (int a = 0; a < TT; a++)
#define for_rows(b) _Pragma("GCC unroll 4") for (int b = 0; b < RT; b++)

/* -------------------------------------------------------------- helpers */

/* Loads min(m, 4) floats, zero-filling missing lanes. */
LP_INLINE float32x4_t ld(const float *p, int m) {
    if (m >= 4) return vld1q_f32(p);
    float buf[4] = {0};
    memcpy(buf, p, (size_t)m * sizeof *p);
    return vld1q_f32(buf);
}

LP_INLINE void st(float *p, float32x4_t v, int m) {
    if (m >= 4) {
        vst1q_f32(p, v);
        return;
    }
    float buf[4];
    vst1q_f32(buf, v);
    memcpy(p, buf, (size_t)m * sizeof *p);
}

LP_INLINE float32x4_t ld_h(const uint16_t *p, int m) {
    if (m >= 4) return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(p)));
    uint16_t buf[4] = {0};
    memcpy(buf, p, (size_t)m * sizeof *p);
    return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(buf)));
}

/* fp16 block scale to float with one fcvt (baseline armv8-a). */
LP_INLINE float h2f(uint16_t bits) {
    __fp16 h;
    memcpy(&h, &bits, sizeof h);
    return (float)h;
}

/* ------------------------------------------------------ gemm f32 / f16 */

/* acc[a][b] += x[a][i, i+m) * w[b][i, i+m); m = 4 is the constant
 * full-vector case. TT, RT and F16 are constants at every call site. */
LP_INLINE void gemm_step(const int TT, const int RT, const int F16, const float *const *x,
                         const void *const *w, int i, int m, float32x4_t acc[4][4]) {
    float32x4_t wv[4];
    for_rows(b) wv[b] = F16 ? ld_h((const uint16_t *)w[b] + i, m) : ld((const float *)w[b] + i, m);
    for_tokens(a) {
        const float32x4_t xv = ld(x[a] + i, m);
        for_rows(b) acc[a][b] = vfmaq_f32(acc[a][b], xv, wv[b]);
    }
}

/* 4 tokens x 4 rows = 16 accumulators of the 32 vector registers. */
LP_INLINE void gemm_tile(const int TT, const int RT, const int F16, int n_in, const float *X,
                         const void *W, float *Y, int ldy, int t0, int r0) {
    float32x4_t acc[4][4];
    const float *x[4];
    const void *w[4];
    const size_t esize = F16 ? sizeof(uint16_t) : sizeof(float);
    for_tokens(a) x[a] = X + (size_t)(t0 + a) * n_in;
    for_rows(b) w[b] = (const char *)W + (size_t)(r0 + b) * n_in * esize;
    for_tokens(a)
        for_rows(b) acc[a][b] = vdupq_n_f32(0.0f);
    int i = 0;
    for (; i + 4 <= n_in; i += 4) gemm_step(TT, RT, F16, x, w, i, 4, acc);
    if (i < n_in) gemm_step(TT, RT, F16, x, w, i, n_in - i, acc);
    for_tokens(a)
        for_rows(b) Y[(size_t)(t0 + a) * ldy + r0 + b] = vaddvq_f32(acc[a][b]);
}

/* Rows outer, tokens inner: a tile's weight rows stay in cache while all
 * tokens pass over them; with T = 1 each row is streamed once. */
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

static void gemm_f16(int T, int n_in, const float *X, const uint16_t *W, float *Y,
                     int ldy, int r0, int r1) {
    gemm_rows(1, T, n_in, X, W, Y, ldy, r0, r1);
}

/* -------------------------------------------------------------- gemm q8 */

/* The int8 matmul, in two versions sharing this tile: DOT = 1 uses sdot
 * (armv8.2 dotprod), DOT = 0 widening multiplies (smull/smlal2 into int16,
 * exact because |x|,|w| <= 127 keep a pair of products below 2^15, then
 * sadalp into int32). Each block's 4 int32 lanes are converted to float and
 * scaled by dx * dw. */
#define Q8_TILE(NAME, DOT_EXPR)                                                             \
    LP_INLINE void NAME(const int TT, const int RT, int nb, const lp_block_q8 *X,          \
                        const lp_block_q8 *W, float *Y, int ldy, int t0, int r0) {          \
        float32x4_t acc[4][4];                                                              \
        const lp_block_q8 *x[4], *w[4];                                                     \
        for_tokens(a) x[a] = X + (size_t)(t0 + a) * nb;                                     \
        for_rows(b) w[b] = W + (size_t)(r0 + b) * nb;                                       \
        for_tokens(a) for_rows(b) acc[a][b] = vdupq_n_f32(0.0f);                            \
        for (int k = 0; k < nb; k++) {                                                      \
            int8x16_t w0[4], w1[4];                                                         \
            float dw[4];                                                                    \
            for_rows(b) {                                                                   \
                w0[b] = vld1q_s8(w[b][k].qs);                                               \
                w1[b] = vld1q_s8(w[b][k].qs + 16);                                          \
                dw[b] = h2f(w[b][k].d);                                                     \
            }                                                                               \
            for_tokens(a) {                                                                 \
                const int8x16_t x0 = vld1q_s8(x[a][k].qs), x1 = vld1q_s8(x[a][k].qs + 16);  \
                const float dx = h2f(x[a][k].d);                                            \
                for_rows(b) {                                                               \
                    const int32x4_t is = DOT_EXPR(x0, x1, w0[b], w1[b]);                    \
                    acc[a][b] = vfmaq_n_f32(acc[a][b], vcvtq_f32_s32(is), dx * dw[b]);      \
                }                                                                           \
            }                                                                               \
        }                                                                                   \
        for_tokens(a) for_rows(b) Y[(size_t)(t0 + a) * ldy + r0 + b] = vaddvq_f32(acc[a][b]); \
    }

/* Tile choice: 2 tokens x 4 rows keeps 8 accumulators + 8 weight vectors
 * in registers; T = 1 (decode) streams 4 rows at a time. */
#define Q8_GEMM(NAME, TILE)                                                                 \
    static void NAME(int T, int n_in, const lp_block_q8 *Xq, const lp_block_q8 *W,          \
                     float *Y, int ldy, int r0, int r1) {                                   \
        const int nb = n_in / LP_QK8;                                                       \
        int r = r0;                                                                         \
        for (; r + 4 <= r1; r += 4) {                                                       \
            int t = 0;                                                                      \
            for (; t + 2 <= T; t += 2) TILE(2, 4, nb, Xq, W, Y, ldy, t, r);                 \
            for (; t < T; t++) TILE(1, 4, nb, Xq, W, Y, ldy, t, r);                         \
        }                                                                                   \
        for (; r < r1; r++)                                                                 \
            for (int t = 0; t < T; t++) TILE(1, 1, nb, Xq, W, Y, ldy, t, r);                \
    }

LP_INLINE int32x4_t dot_widen(int8x16_t x0, int8x16_t x1, int8x16_t w0, int8x16_t w1) {
    const int16x8_t p0 = vmlal_high_s8(vmull_s8(vget_low_s8(x0), vget_low_s8(w0)), x0, w0);
    const int16x8_t p1 = vmlal_high_s8(vmull_s8(vget_low_s8(x1), vget_low_s8(w1)), x1, w1);
    return vpadalq_s16(vpaddlq_s16(p0), p1);
}

Q8_TILE(q8_tile_widen, dot_widen)
Q8_GEMM(gemm_q8, q8_tile_widen)

#pragma GCC push_options
#pragma GCC target("arch=armv8.2-a+dotprod")
LP_INLINE int32x4_t dot_sdot(int8x16_t x0, int8x16_t x1, int8x16_t w0, int8x16_t w1) {
    return vdotq_s32(vdotq_s32(vdupq_n_s32(0), x0, w0), x1, w1);
}

Q8_TILE(q8_tile_sdot, dot_sdot)
Q8_GEMM(gemm_q8_sdot, q8_tile_sdot)
#pragma GCC pop_options

/* ------------------------------------------------------ gemm q8 packed */

/* LP_Q8P (quant/blocks.h). 16 bytes of a k-quad slice (64 bytes: 4 k of
 * 16 rows) hold 4 k of 4 rows; xor 0x80 turns the stored q + 128 back into
 * signed q, so the products are signed x signed and corr is not needed.
 * A block function fills s[t][r] (rows 4r..4r+3 of the group, one int32
 * lane per row) with the exact int32 dots of one 32-element block; the
 * tile then scales them by d_w (4 rows per vector) * d_x, so no lane ever
 * needs a horizontal sum. Two versions of the block, as for gemm_q8:
 * sdot (armv8.2 dotprod) and widening multiplies (armv8-a). */
#define Q8P_MR 2 /* tokens per tile */

/* 4 k of 4 rows as signed bytes. */
LP_INLINE int8x16_t q8p_w(const uint8_t *p) {
    return vreinterpretq_s8_u8(veorq_u8(vld1q_u8(p), vdupq_n_u8(0x80)));
}

/* 4 activation bytes repeated over 16 lanes (memcpy: any alignment). */
LP_INLINE int8x16_t q8p_x4(const int8_t *p) {
    int32_t v;
    memcpy(&v, p, sizeof v);
    return vreinterpretq_s8_s32(vdupq_n_s32(v));
}

/* armv8-a: vmull/vmlal multiply two k-quads (j, j+1) into int16 lanes (a
 * lane holds w_j x_j + w_j1 x_j1, at most 2 * 128 * 127, no overflow);
 * vpadal adds neighbours into int32, leaving each row's sum in two lanes
 * (lo: rows 0-1, hi: rows 2-3) that one vpadd joins at the end. */
LP_INLINE void q8p_block_widen(const int TT, const uint8_t *qs, const int8_t *const *x, int b,
                               int32x4_t s[Q8P_MR][4]) {
    int32x4_t lo[Q8P_MR][4], hi[Q8P_MR][4];
    for_tokens(a) for (int r = 0; r < 4; r++) lo[a][r] = hi[a][r] = vdupq_n_s32(0);
    for (int j = 0; j < 8; j += 2) {
        int8x16_t w0[4], w1[4];
        for (int r = 0; r < 4; r++) {
            w0[r] = q8p_w(qs + 64 * j + 16 * r);
            w1[r] = q8p_w(qs + 64 * (j + 1) + 16 * r);
        }
        for_tokens(a) {
            const int8x16_t x0 = q8p_x4(x[a] + 32 * b + 4 * j), x1 = q8p_x4(x[a] + 32 * b + 4 * j + 4);
            for (int r = 0; r < 4; r++) {
                const int16x8_t pl = vmlal_s8(vmull_s8(vget_low_s8(w0[r]), vget_low_s8(x0)),
                                              vget_low_s8(w1[r]), vget_low_s8(x1));
                const int16x8_t ph = vmlal_high_s8(vmull_high_s8(w0[r], x0), w1[r], x1);
                lo[a][r] = vpadalq_s16(lo[a][r], pl);
                hi[a][r] = vpadalq_s16(hi[a][r], ph);
            }
        }
    }
    for_tokens(a) for (int r = 0; r < 4; r++) s[a][r] = vpaddq_s32(lo[a][r], hi[a][r]);
}

/* Tokens [t0, t0+TT) x the 16 rows of group g; writes rows < n_out. BLOCK
 * is one of the block functions above. */
#define Q8P_TILE(NAME, BLOCK)                                                                 \
    LP_INLINE void NAME(const int TT, int n_in, const lp_q8_act *X, const uint8_t *W,         \
                        int n_out, float *Y, int ldy, int t0, int g) {                        \
        const int nb = n_in / LP_QK8;                                                         \
        const uint8_t *grp = W + (size_t)g * LP_Q8P_GROUP_BYTES(n_in); /* (nb, 544) */        \
        const int8_t *xq[Q8P_MR];                                      /* (n_in) each */      \
        float32x4_t acc[Q8P_MR][4];                                                           \
        for_tokens(a) {                                                                       \
            xq[a] = X->qs + (size_t)(t0 + a) * n_in;                                          \
            for (int r = 0; r < 4; r++) acc[a][r] = vdupq_n_f32(0.0f);                        \
        }                                                                                     \
        for (int b = 0; b < nb; b++) {                                                        \
            int32x4_t s[Q8P_MR][4];                                                           \
            BLOCK(TT, grp + (size_t)nb * 32 + (size_t)b * 512, xq, b, s);                     \
            for (int r = 0; r < 4; r++) {                                                     \
                const uint16_t *d = (const uint16_t *)(const void *)(grp + 32 * b) + 4 * r;   \
                const float32x4_t dw = vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(d)));       \
                for_tokens(a) {                                                               \
                    const float32x4_t sc = vmulq_n_f32(dw, X->d[(size_t)(t0 + a) * nb + b]);  \
                    acc[a][r] = vfmaq_f32(acc[a][r], vcvtq_f32_s32(s[a][r]), sc);             \
                }                                                                             \
            }                                                                                 \
        }                                                                                     \
        for (int r = 0; r < 4; r++) {                                                         \
            const int row = g * LP_Q8P_ROWS + 4 * r; /* rows past n_out: padding */           \
            if (row >= n_out) break;                                                          \
            for_tokens(a) st(Y + (size_t)(t0 + a) * ldy + row, acc[a][r], n_out - row);       \
        }                                                                                     \
    }

/* Groups outer, tokens inner: a group (nb x 544 bytes) stays in cache while
 * every token tile passes over it; T = 1 streams it once. */
#define Q8P_GEMM(NAME, TILE, MR)                                                              \
    static void NAME(int T, int n_in, const lp_q8_act *X, const uint8_t *W, int n_out,        \
                     float *Y, int ldy, int g0, int g1) {                                     \
        for (int g = g0; g < g1; g++) {                                                       \
            int t = 0;                                                                        \
            for (; t + MR <= T; t += MR) TILE(MR, n_in, X, W, n_out, Y, ldy, t, g);           \
            for (; t < T; t++) TILE(1, n_in, X, W, n_out, Y, ldy, t, g);                      \
        }                                                                                     \
    }

Q8P_TILE(q8p_tile_widen, q8p_block_widen)
Q8P_GEMM(gemm_q8p, q8p_tile_widen, 1)

#pragma GCC push_options
#pragma GCC target("arch=armv8.2-a+dotprod")
/* sdot by lane: lane i of the result gains the dot of row i's 4 bytes of
 * w with k-quad `lane` of x (16 bytes of x = 4 k-quads). */
#define Q8P_SDOT_J(j)                                                                         \
    do {                                                                                      \
        int8x16_t w[4];                                                                       \
        for (int r = 0; r < 4; r++) w[r] = q8p_w(qs + 64 * (j) + 16 * r);                     \
        for_tokens(a) for (int r = 0; r < 4; r++) s[a][r] =                                   \
            vdotq_laneq_s32(s[a][r], w[r], xv[a][(j) / 4], (j) % 4);                          \
    } while (0)

LP_INLINE void q8p_block_sdot(const int TT, const uint8_t *qs, const int8_t *const *x, int b,
                              int32x4_t s[Q8P_MR][4]) {
    int8x16_t xv[Q8P_MR][2];
    for_tokens(a) {
        xv[a][0] = vld1q_s8(x[a] + 32 * b);
        xv[a][1] = vld1q_s8(x[a] + 32 * b + 16);
        for (int r = 0; r < 4; r++) s[a][r] = vdupq_n_s32(0);
    }
    Q8P_SDOT_J(0);
    Q8P_SDOT_J(1);
    Q8P_SDOT_J(2);
    Q8P_SDOT_J(3);
    Q8P_SDOT_J(4);
    Q8P_SDOT_J(5);
    Q8P_SDOT_J(6);
    Q8P_SDOT_J(7);
}

Q8P_TILE(q8p_tile_sdot, q8p_block_sdot)
Q8P_GEMM(gemm_q8p_sdot, q8p_tile_sdot, Q8P_MR)
#pragma GCC pop_options

/* Bit-identical to the scalar twin: same fp32 d = amax / 127, same
 * x * (1/d), fcvtas rounds half away from zero as roundf; corr from the
 * exact int32 sum. */
static void quantize_q8a(const float *x, int n, int8_t *qs, float *d, int32_t *corr) {
    for (int k = 0; k < n / LP_QK8; k++) {
        const float *xb = x + (size_t)k * LP_QK8; // (32)
        float32x4_t v[8], amax = vdupq_n_f32(0.0f);
        uint32x4_t finite = vdupq_n_u32(~0u);
        for (int j = 0; j < 8; j++) {
            v[j] = vld1q_f32(xb + 4 * j);
            amax = vmaxq_f32(amax, vabsq_f32(v[j]));
            finite = vandq_u32(finite, vcltq_f32(vabsq_f32(v[j]), vdupq_n_f32(INFINITY)));
        }
        if (vminvq_u32(finite) == 0) { /* NaN or inf */
            lp_q8a_nonfinite(qs + (size_t)k * LP_QK8, &d[k], &corr[k]);
            continue;
        }
        d[k] = vmaxvq_f32(amax) / 127.0f;
        const float id = lp_q8_inverse(d[k]);
        int32x4_t sum = vdupq_n_s32(0);
        for (int j = 0; j < 8; j += 2) {
            const int32x4_t q0 = vcvtaq_s32_f32(vmulq_n_f32(v[j], id));
            const int32x4_t q1 = vcvtaq_s32_f32(vmulq_n_f32(v[j + 1], id));
            sum = vaddq_s32(sum, vaddq_s32(q0, q1));
            const int16x8_t q16 = vcombine_s16(vqmovn_s32(q0), vqmovn_s32(q1));
            vst1_s8(qs + (size_t)k * LP_QK8 + 4 * j, vqmovn_s16(q16));
        }
        corr[k] = -128 * vaddvq_s32(sum);
    }
}

/* Bit-identical to the scalar quantizer: same fp32 d and x * (1/d);
 * fcvtas rounds to nearest with ties away from zero, as roundf. */
static void quantize_q8(const float *x, lp_block_q8 *y, int n) {
    for (int k = 0; k < n / LP_QK8; k++) {
        const float *xb = x + (size_t)k * LP_QK8; // (32)
        float32x4_t v[8], amax = vdupq_n_f32(0.0f);
        for (int j = 0; j < 8; j++) {
            v[j] = vld1q_f32(xb + 4 * j);
            amax = vmaxq_f32(amax, vabsq_f32(v[j]));
        }
        const float d = vmaxvq_f32(amax) / 127.0f;
        const float id = lp_q8_inverse(d);
        y[k].d = lp_f32_to_f16(d);
        for (int j = 0; j < 8; j += 2) {
            const int32x4_t q0 = vcvtaq_s32_f32(vmulq_n_f32(v[j], id));
            const int32x4_t q1 = vcvtaq_s32_f32(vmulq_n_f32(v[j + 1], id));
            const int16x8_t q16 = vcombine_s16(vqmovn_s32(q0), vqmovn_s32(q1));
            vst1_s8(y[k].qs + 4 * j, vqmovn_s16(q16));
        }
    }
}

/* ----------------------------------------------------------- vector ops */

static float dot_f32(const float *a, const float *b, int n) {
    float32x4_t s0 = vdupq_n_f32(0), s1 = vdupq_n_f32(0), s2 = vdupq_n_f32(0), s3 = vdupq_n_f32(0);
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        s0 = vfmaq_f32(s0, vld1q_f32(a + i), vld1q_f32(b + i));
        s1 = vfmaq_f32(s1, vld1q_f32(a + i + 4), vld1q_f32(b + i + 4));
        s2 = vfmaq_f32(s2, vld1q_f32(a + i + 8), vld1q_f32(b + i + 8));
        s3 = vfmaq_f32(s3, vld1q_f32(a + i + 12), vld1q_f32(b + i + 12));
    }
    for (; i < n; i += 4) s0 = vfmaq_f32(s0, ld(a + i, n - i), ld(b + i, n - i));
    return vaddvq_f32(vaddq_f32(vaddq_f32(s0, s1), vaddq_f32(s2, s3)));
}

static void rmsnorm(float *out, const float *x, const float *w, int n, float eps) {
    float32x4_t ss = vdupq_n_f32(0);
    for (int i = 0; i < n; i += 4) {
        const float32x4_t v = ld(x + i, n - i);
        ss = vfmaq_f32(ss, v, v);
    }
    const float inv = 1.0f / sqrtf(vaddvq_f32(ss) / (float)n + eps);
    for (int i = 0; i < n; i += 4)
        st(out + i, vmulq_f32(vmulq_n_f32(ld(x + i, n - i), inv), ld(w + i, n - i)), n - i);
}

static void layernorm(float *out, const float *x, const float *w, const float *b, int n,
                      float eps) {
    float32x4_t s = vdupq_n_f32(0);
    for (int i = 0; i < n; i += 4) s = vaddq_f32(s, ld(x + i, n - i));
    const float mean = vaddvq_f32(s) / (float)n;
    const float32x4_t mv = vdupq_n_f32(mean);
    float var = 0.0f;
    int i = 0;
    float32x4_t vv = vdupq_n_f32(0);
    for (; i + 4 <= n; i += 4) {
        const float32x4_t dv = vsubq_f32(vld1q_f32(x + i), mv);
        vv = vfmaq_f32(vv, dv, dv);
    }
    var = vaddvq_f32(vv);
    for (; i < n; i++) var += (x[i] - mean) * (x[i] - mean);
    const float inv = 1.0f / sqrtf(var / (float)n + eps);
    for (i = 0; i < n; i += 4) {
        const int m = n - i;
        float32x4_t y = vmulq_f32(vmulq_n_f32(vsubq_f32(ld(x + i, m), mv), inv), ld(w + i, m));
        if (b) y = vaddq_f32(y, ld(b + i, m));
        st(out + i, y, m);
    }
}

static void softmax(float *x, int n) {
    float mx = -INFINITY;
    int i = 0;
    float32x4_t mv = vdupq_n_f32(-INFINITY);
    for (; i + 4 <= n; i += 4) mv = vmaxq_f32(mv, vld1q_f32(x + i));
    mx = vmaxvq_f32(mv);
    for (; i < n; i++) mx = fmaxf(mx, x[i]);
    float32x4_t sum = vdupq_n_f32(0);
    const float32x4_t maxv = vdupq_n_f32(mx);
    for (i = 0; i < n; i += 4) {
        const int m = n - i;
        float32x4_t e = Sleef_expf4_u10advsimd(vsubq_f32(ld(x + i, m), maxv));
        st(x + i, e, m);
        if (m < 4) { /* missing lanes held exp(0 - max): drop them */
            float buf[4] = {0};
            memcpy(buf, x + i, (size_t)m * sizeof *x);
            e = vld1q_f32(buf);
        }
        sum = vaddq_f32(sum, e);
    }
    const float inv = 1.0f / vaddvq_f32(sum);
    for (i = 0; i < n; i += 4) st(x + i, vmulq_n_f32(ld(x + i, n - i), inv), n - i);
}

static void gelu_tanh(float *x, int n) {
    for (int i = 0; i < n; i += 4) {
        const float32x4_t v = ld(x + i, n - i);
        const float32x4_t inner = vmulq_n_f32(
            vfmaq_f32(v, vmulq_n_f32(v, 0.044715f), vmulq_f32(v, v)), 0.7978845608028654f);
        const float32x4_t th = Sleef_tanhf4_u10advsimd(inner);
        st(x + i, vmulq_f32(vmulq_n_f32(v, 0.5f), vaddq_f32(vdupq_n_f32(1.0f), th)), n - i);
    }
}

static void gelu_erf(float *x, int n) {
    for (int i = 0; i < n; i += 4) {
        const float32x4_t v = ld(x + i, n - i);
        const float32x4_t e = Sleef_erff4_u10advsimd(vmulq_n_f32(v, 0.7071067811865476f));
        st(x + i, vmulq_f32(vmulq_n_f32(v, 0.5f), vaddq_f32(vdupq_n_f32(1.0f), e)), n - i);
    }
}

static void swiglu(float *out, const float *gate, const float *up, int n) {
    for (int i = 0; i < n; i += 4) {
        const int m = n - i;
        const float32x4_t g = ld(gate + i, m);
        const float32x4_t e = Sleef_expf4_u10advsimd(vnegq_f32(g));
        const float32x4_t silu = vdivq_f32(g, vaddq_f32(vdupq_n_f32(1.0f), e));
        st(out + i, vmulq_f32(silu, ld(up + i, m)), m);
    }
}

static void rope(float *x, int n_heads, int head_dim, int rot_dim, const float *cs,
                 const float *sn, int neox) {
    const int half = rot_dim / 2;
    for (int h = 0; h < n_heads; h++) {
        float *v = x + (size_t)h * head_dim; // (head_dim)
        int i = 0;
        for (; i + 4 <= half; i += 4) {
            const float32x4_t c = vld1q_f32(cs + i), s = vld1q_f32(sn + i);
            /* neox: pairs (i, i+half); else (2i, 2i+1), split by ld2/st2 */
            float32x4x2_t p;
            if (neox) p.val[0] = vld1q_f32(v + i), p.val[1] = vld1q_f32(v + half + i);
            else p = vld2q_f32(v + 2 * i);
            const float32x4_t a = p.val[0], b = p.val[1];
            p.val[0] = vfmsq_f32(vmulq_f32(a, c), b, s);
            p.val[1] = vfmaq_f32(vmulq_f32(b, c), a, s);
            if (neox) vst1q_f32(v + i, p.val[0]), vst1q_f32(v + half + i, p.val[1]);
            else vst2q_f32(v + 2 * i, p);
        }
        for (; i < half; i++) {
            const int i0 = neox ? i : 2 * i, i1 = neox ? i + half : 2 * i + 1;
            const float a = v[i0], b = v[i1];
            v[i0] = a * cs[i] - b * sn[i];
            v[i1] = a * sn[i] + b * cs[i];
        }
    }
}

static void add(float *y, const float *x, int n) {
    for (int i = 0; i < n; i += 4) st(y + i, vaddq_f32(ld(y + i, n - i), ld(x + i, n - i)), n - i);
}

static void f16_to_f32(const uint16_t *x, float *y, int n) {
    for (int i = 0; i < n; i += 4) st(y + i, ld_h(x + i, n - i), n - i);
}

static void f32_to_f16(const float *x, uint16_t *y, int n) {
    for (int i = 0; i < n; i += 4) {
        const int m = n - i;
        const uint16x4_t h = vreinterpret_u16_f16(vcvt_f16_f32(ld(x + i, m)));
        if (m >= 4) {
            vst1_u16(y + i, h);
        } else {
            uint16_t buf[4];
            vst1_u16(buf, h);
            memcpy(y + i, buf, (size_t)m * sizeof *y);
        }
    }
}

/* ------------------------------------------------------------ attention */

LP_INLINE float32x4_t ld_kv(const void *base, size_t idx, int m, const int F16) {
    return F16 ? ld_h((const uint16_t *)base + idx, m) : ld((const float *)base + idx, m);
}

/* Decode: the vector half of attn_block.h's lp_attn_decode. Scores four
 * keys at a time: four independent FMA chains. */
LP_INLINE void decode_scores_kv(const lp_attn_args *a, int h, const float *q, int n_keys,
                                float *S, const int F16) {
    const int hd = a->head_dim;
    const size_t kl = a->kv_row_ld, k0 = lp_attn_kv_off(a, h);
    int j = 0;
    for (; j + 4 <= n_keys; j += 4) {
        float32x4_t s[4];
        _Pragma("GCC unroll 4") for (int u = 0; u < 4; u++) s[u] = vdupq_n_f32(0);
        for (int i = 0; i < hd; i += 4) {
            const float32x4_t qi = ld(q + i, hd - i);
            _Pragma("GCC unroll 4") for (int u = 0; u < 4; u++)
                s[u] = vfmaq_f32(s[u], qi, ld_kv(a->k, k0 + (j + u) * kl + i, hd - i, F16));
        }
        const float32x4_t sum = vpaddq_f32(vpaddq_f32(s[0], s[1]), vpaddq_f32(s[2], s[3]));
        vst1q_f32(S + j, vmulq_n_f32(sum, a->scale));
    }
    for (; j < n_keys; j++) {
        float32x4_t s0 = vdupq_n_f32(0);
        for (int i = 0; i < hd; i += 4)
            s0 = vfmaq_f32(s0, ld(q + i, hd - i), ld_kv(a->k, k0 + j * kl + i, hd - i, F16));
        S[j] = vaddvq_f32(s0) * a->scale;
    }
}

/* out[d0, d0 + 4*NA) over the keys: NA register accumulators, key by key,
 * so the values are read once, in order. */
LP_INLINE void decode_values_part(const lp_attn_args *a, int h, const float *S, int n_keys,
                                  float *out, int d0, const int NA, const int F16) {
    const int hd = a->head_dim;
    const size_t kl = a->kv_row_ld, v0 = lp_attn_kv_off(a, h) + d0;
    float32x4_t o[16];
    _Pragma("GCC unroll 16") for (int u = 0; u < NA; u++) o[u] = vdupq_n_f32(0);
    for (int j = 0; j < n_keys; j++)
        _Pragma("GCC unroll 16") for (int u = 0; u < NA; u++)
            o[u] = vfmaq_n_f32(o[u], ld_kv(a->v, v0 + j * kl + 4 * u, hd - d0 - 4 * u, F16), S[j]);
    _Pragma("GCC unroll 16") for (int u = 0; u < NA; u++) st(out + d0 + 4 * u, o[u], hd - d0 - 4 * u);
}

/* Widest slices first (64 dims, then halves): a head_dim that is not a
 * multiple of 64 takes a few more passes over the values. */
LP_INLINE void decode_values_kv(const lp_attn_args *a, int h, const float *S, int n_keys,
                                float *out, const int F16) {
    for (int d0 = 0; d0 < a->head_dim;) {
        const int left = (a->head_dim - d0 + 3) / 4; /* vectors */
        const int na = left >= 16 ? 16 : left >= 8 ? 8 : left >= 4 ? 4 : left >= 2 ? 2 : 1;
        if (na == 16) decode_values_part(a, h, S, n_keys, out, d0, 16, F16);
        else if (na == 8) decode_values_part(a, h, S, n_keys, out, d0, 8, F16);
        else if (na == 4) decode_values_part(a, h, S, n_keys, out, d0, 4, F16);
        else if (na == 2) decode_values_part(a, h, S, n_keys, out, d0, 2, F16);
        else decode_values_part(a, h, S, n_keys, out, d0, 1, F16);
        d0 += 4 * na;
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

/* Prefill: 8 queries at a time, one per lane of two vectors: the vector
 * half of attn_block.h's blocked kernel. Rows of S, Qt and Ot are 8
 * floats: lanes 0-3 then 4-7. */
/* Rows j0..j0+rows-1 of a K or V cache into b->C, zero beyond the head's
 * columns and beyond b->n_keys. */
static void attn8_load_chunk(const lp_attn_block *b, const void *cache, int j0, int rows) {
    const int f16 = b->a->kv_type == LP_F16;
    for (int r = 0; r < rows; r++) {
        float *dst = b->C + (size_t)r * b->hdp; // (hdp)
        const size_t src = (size_t)(j0 + r) * b->kv_ld + b->kv_off;
        for (int i = 0; i < b->hdp; i += 4) {
            const int m = j0 + r < b->n_keys ? b->hd - i : 0;
            const float32x4_t v = m <= 0 ? vdupq_n_f32(0)
                                  : f16  ? ld_h((const uint16_t *)cache + src + i, m)
                                         : ld((const float *)cache + src + i, m);
            vst1q_f32(dst + i, v);
        }
    }
}

/* S[j0 .. j0+rows) for the keys in b->K; -inf where a lane's query comes
 * before the key. rows % 4 == 0. */
static void attn8_scores(const lp_attn_block *b, int j0, int rows) {
    const int hd4 = (b->hd + 3) / 4 * 4, hdp = b->hdp; /* C and Qt are zero past hd */
    const float scale = b->a->scale;
    const int32x4_t lane_lo = {0, 1, 2, 3}, lane_hi = {4, 5, 6, 7};
    const float32x4_t ninf = vdupq_n_f32(-INFINITY);
    const int last_common = b->a->pos0 + b->t0; /* every lane sees keys <= this */
    for (int r = 0; r < rows; r += 4) {
        const float *k = b->K + (size_t)r * hdp; // (4, hdp)
        float32x4_t lo[4], hi[4];
        _Pragma("GCC unroll 4") for (int u = 0; u < 4; u++) lo[u] = hi[u] = vdupq_n_f32(0);
        for (int i = 0; i < hd4; i += 4) {
            const float *q = b->Qt + (size_t)i * 8; // (4, 8)
            const float32x4_t q0l = vld1q_f32(q), q0h = vld1q_f32(q + 4);
            const float32x4_t q1l = vld1q_f32(q + 8), q1h = vld1q_f32(q + 12);
            const float32x4_t q2l = vld1q_f32(q + 16), q2h = vld1q_f32(q + 20);
            const float32x4_t q3l = vld1q_f32(q + 24), q3h = vld1q_f32(q + 28);
            _Pragma("GCC unroll 4") for (int u = 0; u < 4; u++) {
                const float32x4_t kv = vld1q_f32(k + u * hdp + i);
                lo[u] = vfmaq_laneq_f32(lo[u], q0l, kv, 0), hi[u] = vfmaq_laneq_f32(hi[u], q0h, kv, 0);
                lo[u] = vfmaq_laneq_f32(lo[u], q1l, kv, 1), hi[u] = vfmaq_laneq_f32(hi[u], q1h, kv, 1);
                lo[u] = vfmaq_laneq_f32(lo[u], q2l, kv, 2), hi[u] = vfmaq_laneq_f32(hi[u], q2h, kv, 2);
                lo[u] = vfmaq_laneq_f32(lo[u], q3l, kv, 3), hi[u] = vfmaq_laneq_f32(hi[u], q3h, kv, 3);
            }
        }
        _Pragma("GCC unroll 4") for (int u = 0; u < 4; u++) {
            const int32x4_t late = vdupq_n_s32(j0 + r + u - last_common); /* lanes < late can't see it */
            float *s = b->S + (size_t)(j0 + r + u) * 8;
            vst1q_f32(s, vbslq_f32(vcgeq_s32(lane_lo, late), vmulq_n_f32(lo[u], scale), ninf));
            vst1q_f32(s + 4, vbslq_f32(vcgeq_s32(lane_hi, late), vmulq_n_f32(hi[u], scale), ninf));
        }
    }
}

/* S[j] = exp(S[j] - max_j S) over n keys (8 lanes); sums into sum[8]. */
static void attn8_softmax_lanes(float *S, int n, int lanes, float *sum) {
    (void)lanes;
    for (int g = 0; g < 8; g += 4) {
        float32x4_t mx = vdupq_n_f32(-INFINITY), acc = vdupq_n_f32(0);
        for (int j = 0; j < n; j++) mx = vmaxq_f32(mx, vld1q_f32(S + (size_t)j * 8 + g));
        for (int j = 0; j < n; j++) {
            float *p = S + (size_t)j * 8 + g;
            const float32x4_t e = Sleef_expf4_u10advsimd(vsubq_f32(vld1q_f32(p), mx));
            vst1q_f32(p, e);
            acc = vaddq_f32(acc, e);
        }
        vst1q_f32(sum + g, acc);
    }
}

/* Ot += V^T P over the keys j0..j0+rows-1 in b->K, 4 dims at a time. */
static void attn8_values(const lp_attn_block *b, int j0, int rows) {
    const int hdp = b->hdp;
    for (int d0 = 0; d0 < hdp; d0 += 4) {
        float *o = b->Ot + (size_t)d0 * 8; // (4, 8)
        float32x4_t lo[4], hi[4];
        _Pragma("GCC unroll 4") for (int u = 0; u < 4; u++)
            lo[u] = vld1q_f32(o + u * 8), hi[u] = vld1q_f32(o + u * 8 + 4);
        for (int r = 0; r < rows; r++) {
            const float *p = b->S + (size_t)(j0 + r) * 8;
            const float32x4_t pl = vld1q_f32(p), ph = vld1q_f32(p + 4);
            const float32x4_t v = vld1q_f32(b->K + (size_t)r * hdp + d0);
            lo[0] = vfmaq_laneq_f32(lo[0], pl, v, 0), hi[0] = vfmaq_laneq_f32(hi[0], ph, v, 0);
            lo[1] = vfmaq_laneq_f32(lo[1], pl, v, 1), hi[1] = vfmaq_laneq_f32(hi[1], ph, v, 1);
            lo[2] = vfmaq_laneq_f32(lo[2], pl, v, 2), hi[2] = vfmaq_laneq_f32(hi[2], ph, v, 2);
            lo[3] = vfmaq_laneq_f32(lo[3], pl, v, 3), hi[3] = vfmaq_laneq_f32(hi[3], ph, v, 3);
        }
        _Pragma("GCC unroll 4") for (int u = 0; u < 4; u++)
            vst1q_f32(o + u * 8, lo[u]), vst1q_f32(o + u * 8 + 4, hi[u]);
    }
}

static const lp_attn_block_ops attn8_ops = {attn8_load_chunk, attn8_scores, attn8_softmax_lanes,
                                             attn8_values};

/* One query at a time below LP_ATTN_MIN_T queries (decode), else blocked. */
static void attention(const lp_attn_args *a, int h0, int h1) {
    if (a->T < LP_ATTN_MIN_T)
        lp_attn_decode(a, h0, h1, &decode_ops);
    else
        for (int h = h0; h < h1; h++) lp_attn_head_blocked(a, h, 8, &attn8_ops);
}

/* --------------------------------------------------------------- tables */

#define NEON_SHARED                                                                         \
    .name = "neon", .gemm_f32 = gemm_f32, .gemm_f16 = gemm_f16, .quantize_q8 = quantize_q8, \
    .quantize_q8a = quantize_q8a,                                                           \
    .attention = attention, .dot_f32 = dot_f32, .rmsnorm = rmsnorm, .layernorm = layernorm, \
    .softmax = softmax, .gelu_tanh = gelu_tanh, .gelu_erf = gelu_erf, .swiglu = swiglu,     \
    .rope = rope, .add = add, .f16_to_f32 = f16_to_f32, .f32_to_f16 = f32_to_f16

/* armv8-a: runs on every AArch64 CPU. */
const lp_kernels lp_kernels_neon = {NEON_SHARED, .gemm_q8 = gemm_q8, .gemm_q8p = gemm_q8p};
/* Same, with the sdot int8 matmuls (HWCAP_ASIMDDP). */
const lp_kernels lp_kernels_neon_dot = {NEON_SHARED, .gemm_q8 = gemm_q8_sdot,
                                        .gemm_q8p = gemm_q8p_sdot};
