/*
 * avx512.c — kernels for x86-64 with AVX-512 F/BW/VL/DQ and VNNI
 * (Ice Lake, Cascade Lake, Zen 4 and later). Matmuls and the
 * transcendental vector ops use 16-wide vectors; the int8 matmul uses
 * vpdpbusd. Short or memory-bound ops reuse the AVX2 versions, which the
 * same CPU runs at the same speed.
 */
#include <immintrin.h>

#include "scalar.h"
#include <math.h>
#include <sleef.h>

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

static void gemm_f16(int T, int n_in, const float *X, const uint16_t *W, float *Y,
                     int ldy, int r0, int r1) {
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

static void gelu_tanh(float *x, int n) {
    const __m512 k = _mm512_set1_ps(0.7978845608028654f), c = _mm512_set1_ps(0.044715f);
    const __m512 half = _mm512_set1_ps(0.5f), one = _mm512_set1_ps(1.0f);
    for (int i = 0; i < n; i += 16) {
        const __m512 v = ld(x + i, n - i);
        const __m512 inner = _mm512_mul_ps(k, _mm512_fmadd_ps(_mm512_mul_ps(c, v),
                                                              _mm512_mul_ps(v, v), v));
        const __m512 th = Sleef_tanhf16_u10avx512f(inner);
        st(x + i, _mm512_mul_ps(_mm512_mul_ps(half, v), _mm512_add_ps(one, th)), n - i);
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

/* ---------------------------------------------------------------- table */

const lp_kernels lp_kernels_avx512 = {
    .name = "avx512",
    .gemm_f32 = gemm_f32,
    .gemm_f16 = gemm_f16,
    .gemm_q8 = gemm_q8,
    .quantize_q8 = lp_avx2_quantize_q8,
    .gemm_q8p = lp_scalar_gemm_q8p,
    .quantize_q8a = lp_scalar_quantize_q8a,
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
