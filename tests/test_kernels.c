/*
 * test_kernels.c — every kernel of every ISA table this CPU can run,
 * checked against its scalar twin over shapes with odd sizes and tails;
 * then the scalar reference itself against independent expectations
 * (IEEE half tables, double-precision formulas, a naive double attention);
 * then dispatch (names, forcing, LOUPE_ISA handling).
 */
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "loupe.h"
#include "simd/kernels.h"

/* ------------------------------------------------------------ utilities */

typedef struct {
    uint64_t s;
} rng;

static uint32_t rng_u32(rng *r) {
    r->s ^= r->s << 13;
    r->s ^= r->s >> 7;
    r->s ^= r->s << 17;
    return (uint32_t)(r->s >> 32);
}

/* Uniform in [lo, hi). */
static float rng_f(rng *r, float lo, float hi) {
    return lo + (hi - lo) * (float)(rng_u32(r) >> 8) * (1.0f / 16777216.0f);
}

static float *rand_vec(rng *r, int n, float lo, float hi) {
    float *v = malloc((size_t)n * sizeof *v);
    for (int i = 0; i < n; i++) v[i] = rng_f(r, lo, hi);
    return v;
}

static float *fill_vec(int n, float val) {
    float *v = malloc((size_t)n * sizeof *v);
    for (int i = 0; i < n; i++) v[i] = val;
    return v;
}

static double *dvec(int n) { return calloc((size_t)n, sizeof(double)); }

#define SENTINEL 12345.0f /* written around outputs; must survive */

/* ------------------------------------------------------------ comparison */

/* One kernel × one ISA: every element must satisfy
 * |got - want| <= tol * scale[i], where scale says what the error is
 * measured against (|want|, or sum of |terms| for reductions; 0 = exact). */
typedef struct {
    const char *isa, *kern;
    double tol;
    char shape[128];
    int fails;
    double worst; /* largest |got - want| / scale seen, for the log */
} check_ctx;

static void check(check_ctx *c, const float *got, const float *want, const double *scale, int n) {
    for (int i = 0; i < n; i++) {
        if (got[i] == want[i] || (isnan(got[i]) && isnan(want[i]))) continue;
        const double d = fabs((double)got[i] - (double)want[i]);
        if (scale[i] > 0 && d / scale[i] > c->worst) c->worst = d / scale[i];
        if (d <= c->tol * scale[i] && !isnan(got[i]) && !isnan(want[i])) continue;
        if (c->fails++ < 8)
            print_message("FAIL %s/%s %s [%d]: got %.9g want %.9g (|d| %.3g > %.3g)\n", c->isa,
                          c->kern, c->shape, i, got[i], want[i], d, c->tol * scale[i]);
    }
}

/* ------------------------------------------------------------ the cases */

static const int VEC_N[] = {1, 7, 8, 9, 15, 16, 17, 31, 32, 33, 64, 100, 768, 1001};
static const int GEMM_N[] = {1, 7, 8, 9, 15, 16, 17, 31, 32, 33, 64, 100, 768, 4129};
static const int Q8_N[] = {32, 64, 96, 160, 768};
static const int TOKENS[] = {1, 2, 3, 4, 5, 17};
static const int ROWS[][3] = {{13, 0, 13}, {13, 1, 12}, {9, 5, 6}}; /* n_out, r0, r1 */
#define COUNT(a) ((int)(sizeof(a) / sizeof((a)[0])))
#define PAD 19 /* sentinel elements after vector outputs (catches overlong stores) */

/* Y = sentinel everywhere, then rows [r0, r1) computed; scale from the
 * gemm of absolute values (|error| of a reordered fp32 sum grows with
 * sum |x_i w_i|); elements outside the rows are compared exactly. */
static double *gemm_scale(int T, int ldy, int r0, int r1, const float *absY) {
    double *s = dvec(T * ldy);
    for (int t = 0; t < T; t++)
        for (int r = r0; r < r1; r++) s[t * ldy + r] = absY[t * ldy + r] + 1e-30;
    return s;
}

static void case_gemm_f32(const lp_kernels *k, check_ctx *c, rng *g) {
    const lp_kernels *ref = &lp_kernels_scalar;
    for (int a = 0; a < COUNT(GEMM_N); a++)
        for (int b = 0; b < COUNT(TOKENS); b++)
            for (int rr = 0; rr < COUNT(ROWS); rr++) {
                const int n = GEMM_N[a], T = TOKENS[b], n_out = ROWS[rr][0];
                const int r0 = ROWS[rr][1], r1 = ROWS[rr][2], ldy = n_out + 3;
                float *X = rand_vec(g, T * n, -1, 1), *W = rand_vec(g, n_out * n, -1, 1);
                float *aX = malloc((size_t)T * n * 4), *aW = malloc((size_t)n_out * n * 4);
                for (int i = 0; i < T * n; i++) aX[i] = fabsf(X[i]);
                for (int i = 0; i < n_out * n; i++) aW[i] = fabsf(W[i]);
                float *want = fill_vec(T * ldy, SENTINEL), *got = fill_vec(T * ldy, SENTINEL);
                float *absY = fill_vec(T * ldy, 0);
                ref->gemm_f32(T, n, X, W, want, ldy, r0, r1);
                ref->gemm_f32(T, n, aX, aW, absY, ldy, r0, r1);
                k->gemm_f32(T, n, X, W, got, ldy, r0, r1);
                double *s = gemm_scale(T, ldy, r0, r1, absY);
                snprintf(c->shape, sizeof c->shape, "T=%d n_in=%d rows=[%d,%d)", T, n, r0, r1);
                check(c, got, want, s, T * ldy);
                free(X), free(W), free(aX), free(aW), free(want), free(got), free(absY), free(s);
            }
}

static void case_gemm_f16(const lp_kernels *k, check_ctx *c, rng *g) {
    const lp_kernels *ref = &lp_kernels_scalar;
    for (int a = 0; a < COUNT(GEMM_N); a++)
        for (int b = 0; b < COUNT(TOKENS); b++)
            for (int rr = 0; rr < COUNT(ROWS); rr++) {
                const int n = GEMM_N[a], T = TOKENS[b], n_out = ROWS[rr][0];
                const int r0 = ROWS[rr][1], r1 = ROWS[rr][2], ldy = n_out + 3;
                float *X = rand_vec(g, T * n, -1, 1), *aX = malloc((size_t)T * n * 4);
                uint16_t *W = malloc((size_t)n_out * n * 2), *aW = malloc((size_t)n_out * n * 2);
                for (int i = 0; i < T * n; i++) aX[i] = fabsf(X[i]);
                for (int i = 0; i < n_out * n; i++) {
                    W[i] = lp_f32_to_f16(rng_f(g, -1, 1));
                    aW[i] = W[i] & 0x7fff;
                }
                float *want = fill_vec(T * ldy, SENTINEL), *got = fill_vec(T * ldy, SENTINEL);
                float *absY = fill_vec(T * ldy, 0);
                ref->gemm_f16(T, n, X, W, want, ldy, r0, r1);
                ref->gemm_f16(T, n, aX, aW, absY, ldy, r0, r1);
                k->gemm_f16(T, n, X, W, got, ldy, r0, r1);
                double *s = gemm_scale(T, ldy, r0, r1, absY);
                snprintf(c->shape, sizeof c->shape, "T=%d n_in=%d rows=[%d,%d)", T, n, r0, r1);
                check(c, got, want, s, T * ldy);
                free(X), free(W), free(aX), free(aW), free(want), free(got), free(absY), free(s);
            }
}

/* bf16 prefill (tables that have it): against the reference twin, which
 * rounds the same way and sums in double. n_in % 32 == 0; shapes cross the
 * kernel's 512-column chunks, 6-token tiles and 16-row groups. */
static const int BF16_N[] = {32, 64, 96, 512, 544, 1056};
static const int BF16_T[] = {1, 5, 6, 7, 13, 16, 45, 48};
static const int BF16_ROWS[][3] = {{13, 0, 13}, {40, 0, 40}, {40, 16, 37}, {64, 0, 64}, {9, 5, 6}, {600, 16, 590}};

static void case_gemm_f16_bf16(const lp_kernels *k, check_ctx *c, rng *g) {
    for (int a = 0; a < COUNT(BF16_N); a++)
        for (int b = 0; b < COUNT(BF16_T); b++)
            for (int rr = 0; rr < COUNT(BF16_ROWS); rr++) {
                const int n = BF16_N[a], T = BF16_T[b], n_out = BF16_ROWS[rr][0];
                const int r0 = BF16_ROWS[rr][1], r1 = BF16_ROWS[rr][2], ldy = n_out + 3;
                float *X = rand_vec(g, T * n, -1, 1);
                uint16_t *Xb = malloc((size_t)T * n * 2), *aXb = malloc((size_t)T * n * 2);
                uint16_t *W = malloc((size_t)n_out * n * 2), *aW = malloc((size_t)n_out * n * 2);
                lp_ref_f32_to_bf16(X, Xb, T * n);
                for (int i = 0; i < T * n; i++) aXb[i] = Xb[i] & 0x7fff;
                for (int i = 0; i < n_out * n; i++) {
                    W[i] = lp_f32_to_f16(rng_f(g, -1, 1));
                    aW[i] = W[i] & 0x7fff;
                }
                float *want = fill_vec(T * ldy, SENTINEL), *got = fill_vec(T * ldy, SENTINEL);
                float *absY = fill_vec(T * ldy, 0);
                lp_ref_gemm_f16_bf16(T, n, Xb, W, want, ldy, r0, r1);
                lp_ref_gemm_f16_bf16(T, n, aXb, aW, absY, ldy, r0, r1);
                k->gemm_f16_bf16(T, n, Xb, W, got, ldy, r0, r1);
                double *sc = gemm_scale(T, ldy, r0, r1, absY);
                snprintf(c->shape, sizeof c->shape, "T=%d n_in=%d rows=[%d,%d)", T, n, r0, r1);
                check(c, got, want, sc, T * ldy);
                free(X), free(Xb), free(aXb), free(W), free(aW), free(want), free(got);
                free(absY), free(sc);
            }
}

/* Values around rounding ties, tiny and huge ones, infinities and NaN. */
static void case_f32_to_bf16(const lp_kernels *k, check_ctx *c, rng *g) {
    for (int a = 0; a < COUNT(VEC_N); a++) {
        const int n = VEC_N[a];
        float *x = rand_vec(g, n, -3, 3);
        for (int i = 0; i < n; i++) {
            uint32_t u;
            memcpy(&u, &x[i], 4);
            switch (i % 8) {
            case 1: u = (u & 0xffff0000u) | 0x8000u; break; /* an exact tie */
            case 2: u = (u & 0xffff0000u) | 0x7fffu; break;
            case 3: u = (u & 0x807fffffu) | 0x7f000000u; break; /* ~1.7e38: may round to inf */
            case 5: u = (u & 0x807fffffu) | 0x00800000u; break; /* smallest normals */
            default: break;
            }
            memcpy(&x[i], &u, 4);
        }
        if (n > 4) x[4] = INFINITY, x[n - 1] = -INFINITY, x[n / 2] = NAN;
        uint16_t *want = malloc((size_t)(n + PAD) * 2), *got = malloc((size_t)(n + PAD) * 2);
        for (int i = 0; i < n + PAD; i++) want[i] = got[i] = 0x1234;
        lp_ref_f32_to_bf16(x, want, n);
        k->f32_to_bf16(x, got, n);
        float *fw = malloc((size_t)(n + PAD) * 4), *fg = malloc((size_t)(n + PAD) * 4);
        for (int i = 0; i < n + PAD; i++) fw[i] = lp_bf16_to_f32(want[i]), fg[i] = lp_bf16_to_f32(got[i]);
        double *sc = dvec(n + PAD);
        snprintf(c->shape, sizeof c->shape, "n=%d", n);
        check(c, fg, fw, sc, n + PAD);
        free(x), free(want), free(got), free(fw), free(fg), free(sc);
    }
}

/* Random int8 blocks in [-127, 127] with positive fp16 scales. */
static lp_block_q8 *rand_q8(rng *g, int n_blocks) {
    lp_block_q8 *b = malloc((size_t)n_blocks * sizeof *b);
    for (int i = 0; i < n_blocks; i++) {
        b[i].d = lp_f32_to_f16(rng_f(g, 1e-4f, 2e-2f));
        for (int j = 0; j < LP_QK8; j++) b[i].qs[j] = (int8_t)((int)(rng_u32(g) % 255) - 127);
    }
    return b;
}

static lp_block_q8 *abs_q8(const lp_block_q8 *b, int n_blocks) {
    lp_block_q8 *a = malloc((size_t)n_blocks * sizeof *a);
    for (int i = 0; i < n_blocks; i++) {
        a[i].d = b[i].d;
        for (int j = 0; j < LP_QK8; j++) a[i].qs[j] = (int8_t)abs(b[i].qs[j]);
    }
    return a;
}

static void case_gemm_q8(const lp_kernels *k, check_ctx *c, rng *g) {
    const lp_kernels *ref = &lp_kernels_scalar;
    for (int a = 0; a < COUNT(Q8_N); a++)
        for (int b = 0; b < COUNT(TOKENS); b++)
            for (int rr = 0; rr < COUNT(ROWS); rr++) {
                const int n = Q8_N[a], T = TOKENS[b], n_out = ROWS[rr][0], nb = n / LP_QK8;
                const int r0 = ROWS[rr][1], r1 = ROWS[rr][2], ldy = n_out + 3;
                float *X = rand_vec(g, T * n, -3, 3);
                lp_block_q8 *Xq = malloc((size_t)T * nb * sizeof *Xq);
                ref->quantize_q8(X, Xq, T * n);
                lp_block_q8 *W = rand_q8(g, n_out * nb);
                lp_block_q8 *aX = abs_q8(Xq, T * nb), *aW = abs_q8(W, n_out * nb);
                float *want = fill_vec(T * ldy, SENTINEL), *got = fill_vec(T * ldy, SENTINEL);
                float *absY = fill_vec(T * ldy, 0);
                ref->gemm_q8(T, n, Xq, W, want, ldy, r0, r1);
                ref->gemm_q8(T, n, aX, aW, absY, ldy, r0, r1);
                k->gemm_q8(T, n, Xq, W, got, ldy, r0, r1);
                double *s = gemm_scale(T, ldy, r0, r1, absY);
                snprintf(c->shape, sizeof c->shape, "T=%d n_in=%d rows=[%d,%d)", T, n, r0, r1);
                check(c, got, want, s, T * ldy);
                free(X), free(Xq), free(W), free(aX), free(aW), free(want), free(got);
                free(absY), free(s);
            }
}

/* Blocks flattened to floats (d bits, then 32 qs) for an exact compare. */
static void q8_as_floats(const lp_block_q8 *b, int nb, float *out) {
    for (int i = 0; i < nb; i++) {
        out[i * 33] = (float)b[i].d;
        for (int j = 0; j < LP_QK8; j++) out[i * 33 + 1 + j] = (float)b[i].qs[j];
    }
}

/* Scales a block of 32 values (random in [-5, 5]) by s: tiny blocks whose
 * d = max|x| / 127 is subnormal. */
static void scale_block(float *x, float s) {
    for (int j = 0; j < LP_QK8; j++) x[j] *= s;
}

static void case_quantize_q8(const lp_kernels *k, check_ctx *c, rng *g) {
    for (int a = 0; a < COUNT(Q8_N); a++) {
        const int n = Q8_N[a], nb = n / LP_QK8;
        float *x = rand_vec(g, n, -5, 5);
        for (int j = 0; j < LP_QK8; j++) x[j] = 0.0f; /* all-zero block: d = 0 */
        if (nb > 1) x[LP_QK8 + 3] = -1e4f;          /* negative extreme sets d */
        if (nb > 2)                                  /* exact halves: 0.5*d steps */
            for (int j = 0; j < LP_QK8; j++) x[2 * LP_QK8 + j] = (float)(j - 16) * 0.5f;
        if (nb > 3) scale_block(x + 3 * LP_QK8, 1e-38f); /* 1/d overflows: q = 0 */
        lp_block_q8 *want = malloc((size_t)nb * sizeof *want), *got = malloc((size_t)nb * sizeof *got);
        lp_kernels_scalar.quantize_q8(x, want, n);
        k->quantize_q8(x, got, n);
        float *fw = malloc((size_t)nb * 33 * 4), *fg = malloc((size_t)nb * 33 * 4);
        q8_as_floats(want, nb, fw);
        q8_as_floats(got, nb, fg);
        double *s = dvec(nb * 33);
        snprintf(c->shape, sizeof c->shape, "n=%d", n);
        check(c, fg, fw, s, nb * 33);
        free(x), free(want), free(got), free(fw), free(fg), free(s);
    }
}

/* ------------------------------------------------------ packed int8 */

static const int Q8P_NIN[] = {32, 96, 768, 2048 + 32};
static const int Q8P_NOUT[] = {1, 15, 16, 17, 33, 100};
static const int Q8P_T[] = {1, 2, 3, 5, 8, 13, 16, 37, 64};

/* Q8_0 rows with values over the whole int8 range (-128 included: GGUF
 * files may hold it), random fp16 scales and now and then a zero scale. */
static lp_block_q8 *rand_q8_full(rng *g, int n_blocks) {
    lp_block_q8 *b = malloc((size_t)n_blocks * sizeof *b);
    for (int i = 0; i < n_blocks; i++) {
        b[i].d = rng_u32(g) % 17 ? lp_f32_to_f16(rng_f(g, 1e-4f, 2e-2f)) : 0;
        for (int j = 0; j < LP_QK8; j++) b[i].qs[j] = (int8_t)(rng_u32(g) & 0xff);
    }
    if (n_blocks > 0) memset(b[0].qs, -128, 4), memset(b[0].qs + 4, 127, 4); /* extremes */
    return b;
}

/* Packs Q8_0 rows (n_out, n_in/32 blocks) into a fresh LP_Q8P matrix. */
static uint8_t *pack_q8p(const lp_block_q8 *rows, int n_out, int n_in) {
    uint8_t *p = malloc(lp_q8p_bytes(n_out, n_in));
    lp_q8p_pack(rows, n_out, n_in, p, 0, LP_Q8P_GROUPS(n_out));
    return p;
}

/* T activation rows quantized by a table's quantize_q8a. */
typedef struct {
    int8_t *qs;      // (T, n_in)
    float *d;        // (T, n_in/32)
    int32_t *corr;   // (T, n_in/32)
    lp_q8_act act;
} q8_acts;

static void acts_quantize(q8_acts *a, const lp_kernels *k, const float *X, int T, int n_in) {
    const int nb = n_in / LP_QK8;
    a->qs = malloc((size_t)T * n_in);
    a->d = malloc((size_t)T * nb * sizeof *a->d);
    a->corr = malloc((size_t)T * nb * sizeof *a->corr);
    for (int t = 0; t < T; t++)
        k->quantize_q8a(X + (size_t)t * n_in, n_in, a->qs + (size_t)t * n_in, a->d + t * nb,
                        a->corr + t * nb);
    a->act = (lp_q8_act){a->qs, a->d, a->corr, NULL};
}

/* The error scale of Y[t, r]: sum over blocks of |x| . |w| (dequantized),
 * in double, from the unpacked rows (n_out, nb blocks). */
static double *q8p_scale(const q8_acts *x, const lp_block_q8 *Wr, int T, int n_in, int ldy,
                         int r0, int r1) {
    const int nb = n_in / LP_QK8;
    double *s = dvec(T * ldy);
    for (int t = 0; t < T; t++)
        for (int r = r0; r < r1; r++) {
            double acc = 1e-30;
            for (int b = 0; b < nb; b++) {
                const lp_block_q8 *w = &Wr[(size_t)r * nb + b];
                long dot = 0;
                const int8_t *xb = x->qs + (size_t)t * n_in + b * LP_QK8; // (32)
                for (int j = 0; j < LP_QK8; j++) dot += labs((long)xb[j] * w->qs[j]);
                acc += (double)dot * x->d[t * nb + b] * lp_f16_to_f32(w->d);
            }
            s[t * ldy + r] = acc;
        }
    return s;
}

static void acts_free(q8_acts *a) { free(a->qs), free(a->d), free(a->corr); }

/* Group ranges [g0, g1) of G groups: all, the upper half (with the padded
 * last group), the lower half. */
static void q8p_range(int G, int which, int *g0, int *g1) {
    *g0 = which == 1 ? G / 2 : 0;
    *g1 = which == 2 ? (G + 1) / 2 : G;
}

static void case_gemm_q8p(const lp_kernels *k, check_ctx *c, rng *g) {
    const lp_kernels *ref = &lp_kernels_scalar;
    for (int a = 0; a < COUNT(Q8P_NIN); a++)
        for (int o = 0; o < COUNT(Q8P_NOUT); o++)
            for (int b = 0; b < COUNT(Q8P_T); b++) {
                const int n = Q8P_NIN[a], n_out = Q8P_NOUT[o], T = Q8P_T[b], nb = n / LP_QK8;
                const int G = LP_Q8P_GROUPS(n_out), ldy = n_out + 5;
                float *X = rand_vec(g, T * n, -3, 3);
                q8_acts xq;
                acts_quantize(&xq, ref, X, T, n);
                lp_block_q8 *Wr = rand_q8_full(g, n_out * nb);
                uint8_t *W = pack_q8p(Wr, n_out, n);
                for (int which = 0; which < 3; which++) {
                    int g0, g1;
                    q8p_range(G, which, &g0, &g1);
                    const int r0 = g0 * LP_Q8P_ROWS, r1 = g1 * LP_Q8P_ROWS < n_out ? g1 * LP_Q8P_ROWS : n_out;
                    float *want = fill_vec(T * ldy, SENTINEL), *got = fill_vec(T * ldy, SENTINEL);
                    ref->gemm_q8p(T, n, &xq.act, W, n_out, want, ldy, g0, g1);
                    /* tables with their own activation layout: every other
                     * call reads it pre-packed (forward.c), else the kernel
                     * packs by itself */
                    int8_t *tiles = NULL;
                    lp_q8_act act = xq.act;
                    if (k->pack_q8a && T >= 16 && (a + o + b + which) % 2 == 0) {
                        tiles = malloc(k->q8a_tiles_bytes(T, n) + 1);
                        for (int i = 0; i < T / 16; i++) { /* in two block ranges */
                            k->pack_q8a(&xq.act, n, i, 0, n / 64, tiles);
                            k->pack_q8a(&xq.act, n, i, n / 64, n / 32, tiles);
                        }
                        act.tiles = tiles;
                    }
                    k->gemm_q8p(T, n, &act, W, n_out, got, ldy, g0, g1);
                    free(tiles);
                    /* columns outside rows [r0, r1) (padding rows, other
                     * groups, ldy slack) must keep their canary */
                    for (int t = 0; t < T; t++)
                        for (int r = 0; r < ldy; r++)
                            if (r < r0 || r >= r1) want[t * ldy + r] = SENTINEL;
                    double *s = q8p_scale(&xq, Wr, T, n, ldy, r0, r1);
                    snprintf(c->shape, sizeof c->shape, "T=%d n_in=%d n_out=%d groups=[%d,%d)", T,
                             n, n_out, g0, g1);
                    check(c, got, want, s, T * ldy);
                    free(want), free(got), free(s);
                }
                free(X), free(Wr), free(W);
                acts_free(&xq);
            }
}

/* d, qs and corr of one row as floats (all exact) for a bit-exact compare. */
static float *q8a_as_floats(const lp_kernels *k, const float *x, int n) {
    const int nb = n / LP_QK8;
    int8_t *qs = malloc((size_t)n);
    float *d = malloc((size_t)nb * sizeof *d), *out = malloc((size_t)(n + 2 * nb) * sizeof *out);
    int32_t *corr = malloc((size_t)nb * sizeof *corr);
    k->quantize_q8a(x, n, qs, d, corr);
    for (int i = 0; i < n; i++) out[i] = qs[i];
    for (int b = 0; b < nb; b++) out[n + b] = d[b], out[n + nb + b] = (float)corr[b];
    free(qs), free(d), free(corr);
    return out;
}

static void case_quantize_q8a(const lp_kernels *k, check_ctx *c, rng *g) {
    /* 16 blocks at a time (avx512) and the rest; a NaN or an inf in one
     * block (n = 1024, 576: in the second run of 16, in the first) */
    static const int N[] = {32, 64, 96, 160, 512, 768, 2048 + 32, 1024, 576};
    for (int a = 0; a < COUNT(N); a++) {
        const int n = N[a], nb = n / LP_QK8;
        float *x = rand_vec(g, n, -5, 5);
        if (n == 1024) x[20 * LP_QK8 + 5] = NAN;
        if (n == 576) x[5 * LP_QK8 + 31] = -INFINITY;
        for (int j = 0; j < LP_QK8; j++) x[j] = 0.0f; /* all-zero block: d = 0, corr = 0 */
        if (nb > 1) x[LP_QK8 + 3] = -1e4f;          /* negative extreme sets d */
        if (nb > 2) { /* d = 1 exactly: x * (1/d) = k + 0.5 are ties (away from 0) */
            for (int j = 0; j < LP_QK8; j++) x[2 * LP_QK8 + j] = (float)(j - 16) + 0.5f;
            x[2 * LP_QK8 + 31] = 127.0f;
            x[2 * LP_QK8 + 30] = nextafterf(0.5f, 0.0f); /* just below a tie: 0 */
            x[2 * LP_QK8 + 29] = -nextafterf(2.5f, 0.0f);
        }
        if (nb > 3) x[3 * LP_QK8 + 7] = -0.0f;
        if (nb > 9) scale_block(x + 9 * LP_QK8, 1e-38f); /* 1/d overflows: q = 0 */
        if (nb > 4) scale_block(x + (nb - 1) * LP_QK8, 3e-45f); /* subnormal values */
        float *want = q8a_as_floats(&lp_kernels_scalar, x, n), *got = q8a_as_floats(k, x, n);
        double *s = dvec(n + 2 * nb);
        snprintf(c->shape, sizeof c->shape, "n=%d", n);
        check(c, got, want, s, n + 2 * nb);
        free(x), free(want), free(got), free(s);
    }
}

/* Attention: (T, pos0, n_heads, n_kv_heads, head_dim, [h0, h1)) */
static const int ATTN[][7] = {
    {1, 0, 1, 1, 8, 0, 1},   {1, 9, 4, 4, 64, 0, 4},  {5, 0, 4, 2, 64, 1, 4},
    {17, 3, 8, 1, 32, 0, 8}, {3, 31, 6, 3, 80, 2, 5}, {2, 5, 2, 1, 7, 0, 2},
    {4, 0, 4, 4, 16, 3, 4},  {17, 40, 2, 2, 128, 0, 2},
    /* blocks of 16 queries and chunks of 64 keys (avx512): partial blocks,
     * chunk edges, head_dim not a multiple of 16, GQA */
    {8, 0, 2, 1, 64, 0, 2},  {16, 0, 1, 1, 64, 0, 1}, {40, 30, 4, 2, 64, 1, 3},
    {33, 0, 3, 3, 80, 0, 3}, {70, 100, 2, 2, 7, 0, 2}, {21, 43, 2, 1, 40, 0, 2},
    /* decode: GQA groups of 3..12 heads, ranges of whole and partial groups */
    {1, 20, 18, 6, 24, 0, 18}, {2, 60, 32, 4, 64, 1, 30}, {1, 7, 5, 5, 12, 0, 5},
    {1, 33, 32, 4, 64, 0, 32}, {3, 5, 8, 2, 40, 4, 8}, {2, 70, 12, 1, 24, 0, 12},
    {1, 64, 16, 4, 7, 0, 16}};

/* Attention inputs of one shape, with a KV cache of n_ctx rows: position
 * by position (n_ctx, n_kv_heads, head_dim), or head by head (n_kv_heads,
 * n_ctx, head_dim) as the session keeps it. */
typedef struct {
    lp_attn_args a;
    float *q, *kf, *vf;
    uint16_t *kh, *vh;
} attn_case;

static void attn_setup(attn_case *ac, rng *g, const int *sh, lp_dtype kv, int with_probs,
                       int head_major) {
    const int T = sh[0], pos0 = sh[1], nh = sh[2], nkv = sh[3], hd = sh[4];
    const int n_ctx = pos0 + T + 2;
    memset(ac, 0, sizeof *ac);
    ac->q = rand_vec(g, T * nh * hd, -1, 1);
    ac->kf = rand_vec(g, n_ctx * nkv * hd, -1, 1);
    ac->vf = rand_vec(g, n_ctx * nkv * hd, -1, 1);
    ac->kh = malloc((size_t)n_ctx * nkv * hd * 2);
    ac->vh = malloc((size_t)n_ctx * nkv * hd * 2);
    for (int i = 0; i < n_ctx * nkv * hd; i++) {
        ac->kh[i] = lp_f32_to_f16(ac->kf[i]);
        ac->vh[i] = lp_f32_to_f16(ac->vf[i]);
    }
    lp_attn_args *a = &ac->a;
    a->T = T, a->pos0 = pos0, a->n_heads = nh, a->n_kv_heads = nkv, a->head_dim = hd;
    a->scale = 1.0f / sqrtf((float)hd);
    a->q = ac->q;
    a->k = kv == LP_F16 ? (const void *)ac->kh : ac->kf;
    a->v = kv == LP_F16 ? (const void *)ac->vh : ac->vf;
    a->kv_type = kv;
    a->kv_row_ld = head_major ? (size_t)hd : (size_t)nkv * hd;
    a->kv_head_ld = head_major ? (size_t)n_ctx * hd : (size_t)hd;
    a->probs_ld = with_probs ? pos0 + T + 3 : 0;
    a->scratch = aligned_alloc(64, lp_attn_scratch_floats(pos0 + T, hd) * sizeof(float));
}

static void attn_free(attn_case *ac) {
    free(ac->q), free(ac->kf), free(ac->vf), free(ac->kh), free(ac->vh), free(ac->a.scratch);
}

static void case_attention(const lp_kernels *k, check_ctx *c, rng *g) {
    for (int s = 0; s < COUNT(ATTN); s++)
        for (int kv = 0; kv < 2; kv++)
            for (int wp = 0; wp < 4; wp++) { /* probs or not x layout */
                const int *sh = ATTN[s];
                attn_case ac;
                attn_setup(&ac, g, sh, kv ? LP_F16 : LP_F32, wp & 1, wp >> 1);
                const int n_out = sh[0] * sh[2] * sh[4];
                const int n_p = (wp & 1) ? sh[2] * sh[0] * ac.a.probs_ld : 0;
                float *want = fill_vec(n_out + n_p, SENTINEL), *got = fill_vec(n_out + n_p, SENTINEL);
                lp_attn_args a = ac.a;
                a.out = want, a.probs = (wp & 1) ? want + n_out : NULL;
                lp_kernels_scalar.attention(&a, sh[5], sh[6]);
                a.out = got, a.probs = (wp & 1) ? got + n_out : NULL;
                k->attention(&a, sh[5], sh[6]);
                /* outputs and probabilities are in [-1, 1]; a score error
                 * e changes a probability by a factor (1 + e) */
                double *sc = dvec(n_out + n_p);
                for (int i = 0; i < n_out + n_p; i++) sc[i] = want[i] == SENTINEL ? 0.0 : 1.0;
                snprintf(c->shape, sizeof c->shape, "T=%d pos0=%d heads=%d/%d hd=%d h=[%d,%d) %s%s%s",
                         sh[0], sh[1], sh[2], sh[3], sh[4], sh[5], sh[6], kv ? "f16" : "f32",
                         (wp & 1) ? " probs" : "", (wp >> 1) ? " head-major" : "");
                check(c, got, want, sc, n_out + n_p);
                free(want), free(got), free(sc);
                attn_free(&ac);
            }
}

static void case_dot_f32(const lp_kernels *k, check_ctx *c, rng *g) {
    for (int a = 0; a < COUNT(VEC_N); a++) {
        const int n = VEC_N[a];
        float *x = rand_vec(g, n, -1, 1), *y = rand_vec(g, n, -1, 1);
        float want = lp_kernels_scalar.dot_f32(x, y, n), got = k->dot_f32(x, y, n);
        double s = 1e-30;
        for (int i = 0; i < n; i++) s += fabs((double)x[i] * y[i]);
        snprintf(c->shape, sizeof c->shape, "n=%d", n);
        check(c, &got, &want, &s, 1);
        free(x), free(y);
    }
}

/* Runs an in-place/out-of-place vector op on both tables; the output has
 * PAD sentinels after it. op: 0 rmsnorm 1 layernorm 2 softmax 3 gelu_tanh
 * 4 gelu_erf 5 swiglu 6 add. */
static void run_vec_op(const lp_kernels *k, int op, float *out, const float *x,
                       const float *w, const float *b, int n) {
    switch (op) {
    case 0: k->rmsnorm(out, x, w, n, 1e-5f); break;
    case 1: k->layernorm(out, x, w, b, n, 1e-5f); break;
    case 2: memcpy(out, x, (size_t)n * 4), k->softmax(out, n); break;
    case 3: memcpy(out, x, (size_t)n * 4), k->gelu_tanh(out, n); break;
    case 4: memcpy(out, x, (size_t)n * 4), k->gelu_erf(out, n); break;
    case 5: k->swiglu(out, x, w, n); break;
    default: memcpy(out, w, (size_t)n * 4), k->add(out, x, n); break;
    }
}

static void vec_case(const lp_kernels *k, check_ctx *c, rng *g, int op, float lo, float hi) {
    for (int a = 0; a < COUNT(VEC_N); a++) {
        const int n = VEC_N[a];
        float *x = rand_vec(g, n, lo, hi), *w = rand_vec(g, n, -1, 1);
        float *b = rand_vec(g, n, -1, 1);
        float *want = fill_vec(n + PAD, SENTINEL), *got = fill_vec(n + PAD, SENTINEL);
        run_vec_op(&lp_kernels_scalar, op, want, x, w, b, n);
        run_vec_op(k, op, got, x, w, b, n);
        double *s = dvec(n + PAD);
        double mean = 0, var = 0;
        for (int i = 0; i < n; i++) mean += x[i];
        mean /= n;
        for (int i = 0; i < n; i++) var += (x[i] - mean) * (x[i] - mean);
        var /= n;
        for (int i = 0; i < n; i++) {
            if (op == 1) /* cancellation in x - mean: error relative to |x| + |mean| */
                s[i] = (fabs(x[i]) + fabs(mean)) / sqrt(var + 1e-5) * fabs(w[i]) + fabs(b[i]);
            else if (op == 3 || op == 4) /* cancellation in 1 + tanh/erf for x < 0 */
                s[i] = fabs(want[i]) + fabs(x[i]);
            else
                s[i] = fabs(want[i]) + 1e-30;
        }
        snprintf(c->shape, sizeof c->shape, "n=%d x in [%g,%g)", n, lo, hi);
        check(c, got, want, s, n + PAD);
        free(x), free(w), free(b), free(want), free(got), free(s);
    }
}

static void case_rmsnorm(const lp_kernels *k, check_ctx *c, rng *g) { vec_case(k, c, g, 0, -2, 2); }
static void case_layernorm(const lp_kernels *k, check_ctx *c, rng *g) {
    vec_case(k, c, g, 1, -2, 2);
    vec_case(k, c, g, 1, 2, 6); /* large mean */
}
static void case_softmax(const lp_kernels *k, check_ctx *c, rng *g) {
    vec_case(k, c, g, 2, -10, 10);
    vec_case(k, c, g, 2, 80, 100); /* overflows expf unless the max is subtracted */
}
/* [-120, 120) too: below about -10.5 the x86 kernels' exp(-2u) overflows
 * (v / (1 + inf) = -0, the limit), above 10 the result is v */
static void case_gelu_tanh(const lp_kernels *k, check_ctx *c, rng *g) {
    vec_case(k, c, g, 3, -6, 6);
    vec_case(k, c, g, 3, -120, 120);
}
static void case_gelu_erf(const lp_kernels *k, check_ctx *c, rng *g) { vec_case(k, c, g, 4, -6, 6); }
static void case_swiglu(const lp_kernels *k, check_ctx *c, rng *g) { vec_case(k, c, g, 5, -8, 8); }
static void case_add(const lp_kernels *k, check_ctx *c, rng *g) { vec_case(k, c, g, 6, -8, 8); }

/* (n_heads, head_dim, rot_dim) */
static const int ROPE[][3] = {{1, 2, 2},  {2, 8, 8},    {3, 64, 64}, {2, 64, 32},
                              {4, 80, 80}, {2, 128, 64}, {1, 6, 4},   {3, 34, 34}};

static void case_rope(const lp_kernels *k, check_ctx *c, rng *g) {
    for (int s = 0; s < COUNT(ROPE); s++)
        for (int neox = 0; neox < 2; neox++) {
            const int nh = ROPE[s][0], hd = ROPE[s][1], rd = ROPE[s][2], n = nh * hd;
            float *x = rand_vec(g, n, -2, 2), *cs = malloc((size_t)rd / 2 * 4);
            float *sn = malloc((size_t)rd / 2 * 4);
            for (int i = 0; i < rd / 2; i++) {
                const float th = rng_f(g, -3.2f, 3.2f);
                cs[i] = cosf(th), sn[i] = sinf(th);
            }
            float *want = fill_vec(n + PAD, SENTINEL), *got = fill_vec(n + PAD, SENTINEL);
            memcpy(want, x, (size_t)n * 4), memcpy(got, x, (size_t)n * 4);
            lp_kernels_scalar.rope(want, nh, hd, rd, cs, sn, neox);
            k->rope(got, nh, hd, rd, cs, sn, neox);
            /* a*c - b*s with or without fma: error relative to |a c| + |b s|;
             * dims beyond rot_dim must be untouched (exact) */
            double *sc = dvec(n + PAD);
            for (int h = 0; h < nh; h++)
                for (int i = 0; i < rd / 2; i++) {
                    const int i0 = neox ? i : 2 * i, i1 = neox ? i + rd / 2 : 2 * i + 1;
                    const double m = fabs(x[h * hd + i0]) + fabs(x[h * hd + i1]);
                    sc[h * hd + i0] = sc[h * hd + i1] = m;
                }
            snprintf(c->shape, sizeof c->shape, "heads=%d hd=%d rot=%d neox=%d", nh, hd, rd, neox);
            check(c, got, want, sc, n + PAD);
            free(x), free(cs), free(sn), free(want), free(got), free(sc);
        }
}

/* Every one of the 65536 halves, plus sentinels after the output. */
static void case_f16_to_f32(const lp_kernels *k, check_ctx *c, rng *g) {
    (void)g;
    const int n = 65536;
    uint16_t *h = malloc((size_t)n * 2);
    for (int i = 0; i < n; i++) h[i] = (uint16_t)i;
    for (int len = 1; len <= 17; len += 8) { /* tails too */
        float *want = fill_vec(len + PAD, SENTINEL), *got = fill_vec(len + PAD, SENTINEL);
        lp_kernels_scalar.f16_to_f32(h + 1000, want, len);
        k->f16_to_f32(h + 1000, got, len);
        double *s = dvec(len + PAD);
        snprintf(c->shape, sizeof c->shape, "n=%d", len);
        check(c, got, want, s, len + PAD);
        free(want), free(got), free(s);
    }
    float *want = malloc((size_t)n * 4), *got = malloc((size_t)n * 4);
    lp_kernels_scalar.f16_to_f32(h, want, n);
    k->f16_to_f32(h, got, n);
    double *s = dvec(n);
    snprintf(c->shape, sizeof c->shape, "all 65536 halves");
    check(c, got, want, s, n);
    free(h), free(want), free(got), free(s);
}

/* Random floats over the whole half range incl. subnormals, overflow,
 * exact ties; results compared as bit patterns (NaN payloads excepted). */
static void case_f32_to_f16(const lp_kernels *k, check_ctx *c, rng *g) {
    for (int a = 0; a < COUNT(VEC_N); a++) {
        const int n = VEC_N[a] + 4000;
        float *x = malloc((size_t)n * 4);
        for (int i = 0; i < n; i++) {
            const uint32_t kind = rng_u32(g) % 4;
            if (kind == 0) x[i] = ldexpf(rng_f(g, -1, 1), (int)(rng_u32(g) % 50) - 30);
            else if (kind == 1) /* halfway between two halves: ties to even */
                x[i] = lp_f16_to_f32((uint16_t)(rng_u32(g) & 0x7bfe)) +
                       ldexpf(1.0f, -11) * lp_f16_to_f32((uint16_t)(rng_u32(g) & 0x7bff));
            else if (kind == 2) x[i] = rng_f(g, -70000, 70000);
            else x[i] = ldexpf(rng_f(g, -1, 1), -14 - (int)(rng_u32(g) % 12)); /* subnormal */
        }
        x[0] = INFINITY;
        if (n > 2) x[1] = -INFINITY, x[2] = NAN;
        uint16_t *hw = malloc((size_t)(n + PAD) * 2), *hg = malloc((size_t)(n + PAD) * 2);
        for (int i = 0; i < n + PAD; i++) hw[i] = hg[i] = 0x1234;
        lp_kernels_scalar.f32_to_f16(x, hw, n);
        k->f32_to_f16(x, hg, n);
        float *fw = malloc((size_t)(n + PAD) * 4), *fg = malloc((size_t)(n + PAD) * 4);
        for (int i = 0; i < n + PAD; i++) {
            const int nw = (hw[i] & 0x7c00) == 0x7c00 && (hw[i] & 0x3ff);
            const int ng = (hg[i] & 0x7c00) == 0x7c00 && (hg[i] & 0x3ff);
            fw[i] = nw ? NAN : (float)hw[i];
            fg[i] = ng ? NAN : (float)hg[i];
        }
        double *s = dvec(n + PAD);
        snprintf(c->shape, sizeof c->shape, "n=%d", n);
        check(c, fg, fw, s, n + PAD);
        free(x), free(hw), free(hg), free(fw), free(fg), free(s);
    }
}

/* ----------------------------------------------------------- the table */

/* Tolerances are relative to the `scale` each case computes (see above).
 * fp32 epsilon is 1.19e-7. */
typedef struct {
    const char *name;
    void (*run)(const lp_kernels *k, check_ctx *c, rng *g);
    double tol;
    const char *why;
} kernel_case;

static const kernel_case CASES[] = {
    {"gemm_f32", case_gemm_f32, 4e-6,
     "reordered fp32 sums (tiles, 8/16 lanes, fma): the worst case n*eps*sum|x w| "
     "is 5e-4 at n=4129; with random signs the partial sums stay ~sqrt(k) terms, "
     "so the error is a few eps of sum|x w| (observed 2e-7)"},
    {"gemm_f16", case_gemm_f16, 4e-6,
     "same as gemm_f32: fp16 -> fp32 conversion is exact on both sides"},
    {"gemm_q8", case_gemm_q8, 4e-6,
     "int32 block dots are exact; only the per-lane float scaling and the "
     "order of the fp32 block sum differ"},
    {"quantize_q8", case_quantize_q8, 0.0,
     "bit-exact: same fp32 d, same x*(1/d), same round-half-away"},
    {"gemm_q8p", case_gemm_q8p, 4e-6,
     "int32 block dots are exact; the fp32 sum over blocks runs in the same "
     "order, only fma vs mul+add rounds differently (< 1 ulp per block of "
     "sum|terms|); rows outside the groups and padding rows exact (canaries)"},
    {"quantize_q8a", case_quantize_q8a, 0.0,
     "bit-exact d, qs and corr: same fp32 d, same x*(1/d), same round-half-away"},
    {"attention", case_attention, 4e-6,
     "|q|,|k|,|v| <= 1: scores differ by a reordered dot (~1e-6), exp by "
     "<= 1 ulp (SLEEF u10 vs libm), probabilities by the reordered sum"},
    {"dot_f32", case_dot_f32, 4e-6, "reordered fp32 sum, measured against sum|a b|"},
    {"rmsnorm", case_rmsnorm, 4e-6,
     "sum of squares reordered (relative error ~sqrt(n)*eps); then 2 roundings"},
    {"layernorm", case_layernorm, 4e-6,
     "mean and variance sums reordered; x - mean cancels, so error is "
     "measured against (|x|+|mean|)/std*|w| + |b|"},
    {"softmax", case_softmax, 4e-6,
     "exp: SLEEF u10 vs libm (<= 1 ulp each); reordered sum; 1/sum: ~8 ulp"},
    {"gelu_tanh", case_gelu_tanh, 1e-6,
     "tanh <= 1 ulp; 1 + tanh cancels for x < 0, so error is relative to |y|+|x|"},
    {"gelu_erf", case_gelu_erf, 1e-6,
     "erf <= 1 ulp; 1 + erf cancels for x < 0, so error is relative to |y|+|x|"},
    {"swiglu", case_swiglu, 2e-6, "exp <= 1 ulp, one division, one product: few ulp of |y|"},
    {"rope", case_rope, 1e-6,
     "a*c - b*s with fma or without: <= 2 ulp of |a|+|b|; unrotated dims exact"},
    {"add", case_add, 0.0, "one correctly rounded addition: exact"},
    {"f16_to_f32", case_f16_to_f32, 0.0, "every half is exactly representable in fp32"},
    {"f32_to_f16", case_f32_to_f16, 0.0,
     "IEEE round-to-nearest-even is unique (NaN payloads aside)"},
};

/* Only in tables with gemm_f16_bf16 (avx512bf16); against the reference
 * twins lp_ref_*, not the scalar table (which computes f16 exactly). */
static const kernel_case BF16_CASES[] = {
    {"gemm_f16_bf16", case_gemm_f16_bf16, 4e-6,
     "against lp_ref_gemm_f16_bf16 (same bf16 rounding of x and w, exact products, "
     "double sum): only the kernel's f32 sums differ, a few eps of sum|x w|; the "
     "bf16 rounding itself (2^-9 relative per operand) is the design, not error"},
    {"f32_to_bf16", case_f32_to_bf16, 0.0,
     "round to nearest even is unique; denormals to signed zero, NaN stays NaN"},
};

static void test_kernels_vs_scalar(void **state) {
    (void)state;
    int total_fails = 0, n_tables = 0;
    for (const char *const *name = lp_kern_names(); *name; name++) {
        const lp_kernels *k = lp_kern_get(*name);
        if (!k) {
            print_message("skip %s: this CPU cannot run it\n", *name);
            continue;
        }
        n_tables++;
        if (k == &lp_kernels_scalar) continue;
        const int n_bf16 = k->gemm_f16_bf16 ? COUNT(BF16_CASES) : 0;
        for (int i = 0; i < COUNT(CASES) + n_bf16; i++) {
            const kernel_case *kc = i < COUNT(CASES) ? &CASES[i] : &BF16_CASES[i - COUNT(CASES)];
            check_ctx c = {.isa = *name, .kern = kc->name, .tol = kc->tol};
            rng g = {0x9e3779b97f4a7c15ull + (uint64_t)i};
            kc->run(k, &c, &g);
            if (c.fails) print_message("%s/%s: %d mismatches (tol %g: %s)\n", *name, kc->name,
                                       c.fails, kc->tol, kc->why);
            else print_message("%s/%-11s ok, worst error %.2g (tol %g)\n", *name, kc->name,
                               c.worst, kc->tol);
            total_fails += c.fails;
        }
    }
    assert_true(n_tables >= 1);
    assert_int_equal(total_fails, 0);
}

/* -------------------------------------------- the scalar reference itself */

static void test_scalar_f16(void **state) {
    (void)state;
    const lp_kernels *s = &lp_kernels_scalar;
    /* (bits, value) from the IEEE 754 binary16 definition */
    static const struct { uint16_t h; float f; } known[] = {
        {0x0000, 0.0f},         {0x3c00, 1.0f},           {0xc000, -2.0f},
        {0x7bff, 65504.0f},     {0x0001, 0x1p-24f},  {0x03ff, 0x3ffp-24f},
        {0x0400, 0x1p-14f}, {0x3555, 0x1.554p-2f},   {0x7c00, INFINITY},
        {0xfc00, -INFINITY},    {0x3bff, 0x1.ffcp-1f},    {0xb800, -0.5f}};
    for (int i = 0; i < COUNT(known); i++) {
        float f;
        uint16_t h;
        s->f16_to_f32(&known[i].h, &f, 1);
        assert_true(f == known[i].f);
        s->f32_to_f16(&known[i].f, &h, 1);
        assert_int_equal(h, known[i].h);
    }
    /* rounding: ties to even, overflow at 65520, underflow below 2^-25 */
    static const struct { float f; uint16_t h; } rounds[] = {
        {1.0f + 0x1p-11f, 0x3c00}, {1.0f + 0x3p-11f, 0x3c02}, {1.0f + 0x1p-12f, 0x3c00},
        {65519.0f, 0x7bff},        {65520.0f, 0x7c00},        {0x1p-25f, 0x0000},
        {0x1.000002p-25f, 0x0001}, {0x3p-25f, 0x0002},        {1e10f, 0x7c00}};
    for (int i = 0; i < COUNT(rounds); i++) {
        uint16_t h;
        s->f32_to_f16(&rounds[i].f, &h, 1);
        assert_int_equal(h, rounds[i].h);
    }
    uint16_t nan_h;
    float nan_f = NAN;
    s->f32_to_f16(&nan_f, &nan_h, 1);
    assert_true((nan_h & 0x7c00) == 0x7c00 && (nan_h & 0x3ff));
    /* every non-NaN half round-trips and matches ldexp(mantissa, exp) */
    for (int i = 0; i < 65536; i++) {
        const uint16_t h = (uint16_t)i;
        const int e = (h >> 10) & 31, m = h & 0x3ff;
        if (e == 31) continue;
        double v = e ? ldexp(1024 + m, e - 25) : ldexp(m, -24);
        if (h & 0x8000) v = -v;
        float f;
        uint16_t back;
        s->f16_to_f32(&h, &f, 1);
        assert_true((double)f == v);
        s->f32_to_f16(&f, &back, 1);
        assert_int_equal(back, h);
    }
}

/* The bf16 reference against values worked out from the format (1 sign,
 * 8 exponent, 7 fraction bits) and a product computed by hand. */
static void test_scalar_bf16(void **state) {
    (void)state;
    static const struct { float f; uint16_t h; } known[] = {
        {1.0f, 0x3f80}, {-2.0f, 0xc000},
        {1.00390625f, 0x3f80},   /* 1 + 2^-8: a tie, to the even 1.0 */
        {1.01171875f, 0x3f82},   /* 1 + 3*2^-8: a tie, to the even 1 + 2^-6 */
        {0x1.0101p+0f, 0x3f81},  /* 1 + 2^-8 + 2^-16, just above the tie: up */
        {3.38953139e38f, 0x7f7f}, /* the largest bf16 */
        {3.4e38f, 0x7f80},        /* past (2 - 2^-8) * 2^127, the tie with inf: inf */
        {1e-40f, 0x0000}, {-1e-40f, 0x8000}, /* denormal: signed zero */
        {INFINITY, 0x7f80}};
    for (int i = 0; i < COUNT(known); i++) {
        if (lp_ref_bf16_round(known[i].f) != known[i].h)
            print_message("bf16(%.9g) = %04x, want %04x\n", known[i].f,
                          lp_ref_bf16_round(known[i].f), known[i].h);
        assert_int_equal(lp_ref_bf16_round(known[i].f), known[i].h);
    }
    const uint16_t nan = lp_ref_bf16_round(NAN);
    assert_true((nan & 0x7f80) == 0x7f80 && (nan & 0x7f) != 0);
    /* x = (1 + 2^-8, 2) -> bf16 (1, 2); w = f16 (1 + 2^-10, 0.5) -> bf16
     * (1, 0.5): y = 1 + 1 = 2 exactly (exact f16 arithmetic would give
     * 2.0048866...) */
    const float x[2] = {1.00390625f, 2.0f};
    uint16_t xb[2];
    lp_ref_f32_to_bf16(x, xb, 2);
    const uint16_t w[2] = {lp_f32_to_f16(1.0009765625f), lp_f32_to_f16(0.5f)};
    float y = 0;
    lp_ref_gemm_f16_bf16(1, 2, xb, w, &y, 1, 0, 1);
    assert_true(y == 2.0f);
}

static void test_scalar_math(void **state) {
    (void)state;
    const lp_kernels *s = &lp_kernels_scalar;
    rng g = {12345};
    /* softmax: sums to 1, matches exp(x - max) / sum in double */
    float x[300];
    for (int i = 0; i < 300; i++) x[i] = rng_f(&g, -20, 20) + (i == 7 ? 500.0f : 0.0f);
    double mx = -INFINITY, sum = 0, e[300];
    for (int i = 0; i < 300; i++) /* not fmax(): GCC 12 aarch64 -O2 ICEs on that reduction */
        if (x[i] > mx) mx = x[i];
    for (int i = 0; i < 300; i++) sum += e[i] = exp(x[i] - mx);
    s->softmax(x, 300);
    double total = 0;
    for (int i = 0; i < 300; i++) {
        total += x[i];
        assert_true(fabs(x[i] - e[i] / sum) <= 1e-6 * e[i] / sum + 1e-30);
    }
    assert_true(fabs(total - 1.0) < 1e-5);
    /* gelu: Phi(1) = 0.841344746..., and the tanh form from its formula */
    float v[6] = {1, -1, 0, 3, -3, 0.5f}, w[6];
    memcpy(w, v, sizeof v);
    s->gelu_erf(v, 6);
    s->gelu_tanh(w, 6);
    assert_true(fabs(v[0] - 0.8413447460685429) < 1e-6);
    assert_true(fabs(v[1] + 0.15865525393145707) < 1e-6);
    assert_true(v[2] == 0.0f);
    const double in[6] = {1, -1, 0, 3, -3, 0.5};
    for (int i = 0; i < 6; i++) {
        const double t = 0.5 * in[i] * (1 + tanh(sqrt(2 / M_PI) * (in[i] + 0.044715 * pow(in[i], 3))));
        const double ef = 0.5 * in[i] * (1 + erf(in[i] / sqrt(2)));
        assert_true(fabs(w[i] - t) < 2e-6);
        assert_true(fabs(v[i] - ef) < 2e-6);
    }
    /* silu(g) * u */
    float gt[3] = {2, -1, 0}, up[3] = {3, 4, 5}, o[3];
    s->swiglu(o, gt, up, 3);
    for (int i = 0; i < 3; i++)
        assert_true(fabs(o[i] - gt[i] / (1 + exp(-gt[i])) * up[i]) < 1e-6);
    /* rmsnorm and layernorm against double formulas */
    float a[37], wt[37], bs[37], r[37], l[37];
    for (int i = 0; i < 37; i++) a[i] = rng_f(&g, -3, 5), wt[i] = rng_f(&g, 0, 2), bs[i] = rng_f(&g, -1, 1);
    s->rmsnorm(r, a, wt, 37, 1e-6f);
    s->layernorm(l, a, wt, bs, 37, 1e-5f);
    double ss = 0, mean = 0, var = 0;
    for (int i = 0; i < 37; i++) ss += (double)a[i] * a[i];
    for (int i = 0; i < 37; i++) mean += a[i];
    mean /= 37;
    for (int i = 0; i < 37; i++) var += (a[i] - mean) * (a[i] - mean);
    var /= 37; /* biased */
    for (int i = 0; i < 37; i++) {
        assert_true(fabs(r[i] - a[i] / sqrt(ss / 37 + 1e-6) * wt[i]) < 1e-5);
        assert_true(fabs(l[i] - ((a[i] - mean) / sqrt(var + 1e-5) * wt[i] + bs[i])) < 1e-5);
    }
    /* dot and gemm against double */
    float X[2 * 33], W[3 * 33], Y[2 * 3];
    for (int i = 0; i < 66; i++) X[i] = rng_f(&g, -1, 1);
    for (int i = 0; i < 99; i++) W[i] = rng_f(&g, -1, 1);
    s->gemm_f32(2, 33, X, W, Y, 3, 0, 3);
    for (int t = 0; t < 2; t++)
        for (int o2 = 0; o2 < 3; o2++) {
            double acc = 0;
            for (int i = 0; i < 33; i++) acc += (double)X[t * 33 + i] * W[o2 * 33 + i];
            assert_true(fabs(Y[t * 3 + o2] - acc) < 1e-5);
            assert_true(fabs(s->dot_f32(X + t * 33, W + o2 * 33, 33) - acc) < 1e-5);
        }
}

/* Rotation by theta_i = pos * base^(-2i/rot_dim), computed in double. */
static void test_scalar_rope(void **state) {
    (void)state;
    const int nh = 2, hd = 16, rd = 12, pos = 7;
    rng g = {777};
    for (int neox = 0; neox < 2; neox++) {
        float x[2 * 16], cs[6], sn[6];
        double th[6];
        for (int i = 0; i < nh * hd; i++) x[i] = rng_f(&g, -1, 1);
        for (int i = 0; i < rd / 2; i++) {
            th[i] = pos * pow(10000.0, -2.0 * i / rd);
            cs[i] = (float)cos(th[i]), sn[i] = (float)sin(th[i]);
        }
        float y[2 * 16];
        memcpy(y, x, sizeof x);
        lp_kernels_scalar.rope(y, nh, hd, rd, cs, sn, neox);
        for (int h = 0; h < nh; h++) {
            for (int i = 0; i < rd / 2; i++) {
                /* the pair as a complex number, multiplied by e^{i theta} */
                const int i0 = neox ? i : 2 * i, i1 = neox ? i + rd / 2 : 2 * i + 1;
                const double re = x[h * hd + i0], im = x[h * hd + i1];
                assert_true(fabs(y[h * hd + i0] - (re * cos(th[i]) - im * sin(th[i]))) < 1e-6);
                assert_true(fabs(y[h * hd + i1] - (re * sin(th[i]) + im * cos(th[i]))) < 1e-6);
            }
            for (int i = rd; i < hd; i++) assert_true(y[h * hd + i] == x[h * hd + i]);
        }
    }
}

/* int8: dequantization error <= d/2 per element, scale max|x|/127, and the
 * q8 gemm equals the double dot of the dequantized values. */
static void test_scalar_q8(void **state) {
    (void)state;
    rng g = {4242};
    const int n = 96;
    float x[96];
    for (int i = 0; i < n; i++) x[i] = rng_f(&g, -4, 4);
    lp_block_q8 q[3];
    lp_kernels_scalar.quantize_q8(x, q, n);
    for (int b = 0; b < 3; b++) {
        float amax = 0;
        for (int j = 0; j < 32; j++) amax = fmaxf(amax, fabsf(x[b * 32 + j]));
        const float d = lp_f16_to_f32(q[b].d);
        assert_true(fabs(d - amax / 127.0) <= amax / 127.0 * 1e-3); /* fp16 rounding */
        for (int j = 0; j < 32; j++)
            assert_true(fabs(x[b * 32 + j] - d * q[b].qs[j]) <= 0.5 * amax / 127.0 + 128 * fabs(d - amax / 127.0) + 1e-6);
    }
    lp_block_q8 *W = rand_q8(&g, 2 * 3);
    float Y[2];
    lp_kernels_scalar.gemm_q8(1, n, q, W, Y, 2, 0, 2);
    for (int r = 0; r < 2; r++) {
        double acc = 0;
        for (int b = 0; b < 3; b++)
            for (int j = 0; j < 32; j++)
                acc += (double)lp_f16_to_f32(q[b].d) * q[b].qs[j] *
                       lp_f16_to_f32(W[r * 3 + b].d) * W[r * 3 + b].qs[j];
        assert_true(fabs(Y[r] - acc) <= 1e-5 * fabs(acc) + 1e-6);
    }
    free(W);
}

/* Packing only moves bytes: lp_q8p_pack then lp_q8p_unpack_row gives back
 * every Q8_0 row, also when groups are packed in separate calls (as
 * threads do); padding rows unpack to zero blocks; the packed matrix has
 * the documented size; dequant_row is d * q. */
static void test_q8p_pack(void **state) {
    (void)state;
    rng g = {2024};
    static const int shapes[][2] = {{1, 32}, {15, 96}, {16, 64}, {37, 2080}, {100, 768}};
    for (int s = 0; s < COUNT(shapes); s++) {
        const int n_out = shapes[s][0], n_in = shapes[s][1], nb = n_in / LP_QK8;
        const int G = LP_Q8P_GROUPS(n_out);
        assert_int_equal(lp_q8p_bytes(n_out, n_in), (size_t)G * 16 * nb * sizeof(lp_block_q8));
        lp_block_q8 *rows = rand_q8_full(&g, n_out * nb), *back = malloc((size_t)nb * sizeof *back);
        uint8_t *whole = pack_q8p(rows, n_out, n_in), *split = malloc(lp_q8p_bytes(n_out, n_in));
        lp_q8p_pack(rows, n_out, n_in, split, G / 2, G); /* upper groups first */
        lp_q8p_pack(rows, n_out, n_in, split, 0, G / 2);
        assert_memory_equal(whole, split, lp_q8p_bytes(n_out, n_in));
        float *deq = malloc((size_t)n_in * sizeof *deq);
        for (int r = 0; r < G * LP_Q8P_ROWS; r++) {
            lp_q8p_unpack_row(whole, n_in, r, back);
            if (r < n_out) {
                assert_memory_equal(back, rows + (size_t)r * nb, (size_t)nb * sizeof *back);
                lp_q8p_dequant_row(whole, n_in, r, deq);
                for (int i = 0; i < n_in; i++) {
                    const lp_block_q8 *blk = &rows[(size_t)r * nb + i / LP_QK8];
                    assert_true(deq[i] == lp_f16_to_f32(blk->d) * blk->qs[i % LP_QK8]);
                }
            } else {
                for (int b = 0; b < nb; b++) {
                    assert_int_equal(back[b].d, 0);
                    for (int j = 0; j < LP_QK8; j++) assert_int_equal(back[b].qs[j], 0);
                }
            }
        }
        free(rows), free(back), free(whole), free(split), free(deq);
    }
}

/* Every runnable table (the scalar one included) against the definition:
 * quantize_q8a gives d = max|x| / 127, |x - d q| <= d / 2 and corr =
 * -128 sum(q); gemm_q8p equals the double sum over blocks of
 * dot(dequantized x, dequantized w) taken from the Q8_0 rows before
 * packing. Error bound: the int32 block dots are exact, each block term
 * is rounded twice (d_x * d_w, then times the dot) and the fp32 sum of nb
 * terms adds at most nb roundings, so |Y - exact| <= (nb + 2) * 2^-24 *
 * sum |x_i w_i| (first order). */
/* A block whose d = max|x| / 127 is below the smallest normal float would
 * give 1/d = inf and x / d = inf or NaN, which must not reach a
 * float-to-int conversion (UB; the ISAs disagree on its result): every
 * table quantizes it to q = 0 and corr = 0. A block just above that limit
 * quantizes normally, |x - d q| <= d / 2. */
static void test_q8a_tiny(void **state) {
    (void)state;
    const int n = 2 * 16 * LP_QK8; /* the avx512 16-block path and its tail */
    for (const char *const *name = lp_kern_names(); *name; name++) {
        const lp_kernels *k = lp_kern_get(*name);
        if (!k) continue;
        rng g = {78};
        float *x = rand_vec(&g, n, -1, 1);
        for (int b = 0; b < n / LP_QK8; b++) {
            float *xb = x + b * LP_QK8;
            const float amax = b % 3 == 0 ? 1e-37f : b % 3 == 1 ? 0x1p-149f * 7 : 0x1.01p-126f * 127;
            for (int j = 0; j < LP_QK8; j++) xb[j] = fminf(fmaxf(xb[j] * amax, -amax), amax);
            xb[b % LP_QK8] = b % 2 ? -amax : amax;
        }
        float *out = q8a_as_floats(k, x, n);
        for (int b = 0; b < n / LP_QK8; b++) {
            const float d = out[n + b], corr = out[n + n / LP_QK8 + b];
            if (b % 3 != 2) {
                assert_true(d < 0x1p-126f);
                assert_true(corr == 0.0f);
                for (int j = 0; j < LP_QK8; j++) assert_true(out[b * LP_QK8 + j] == 0.0f);
            } else {
                assert_true(d >= 0x1p-126f);
                double sum = 0;
                for (int j = 0; j < LP_QK8; j++) {
                    const float q = out[b * LP_QK8 + j];
                    assert_true(fabs((double)x[b * LP_QK8 + j] - (double)d * q) <= d / 2 * (1 + 1e-6));
                    sum += q;
                }
                assert_true(corr == (float)(-128 * sum));
                assert_true(fabsf(out[b * LP_QK8 + b % LP_QK8]) == 127.0f);
            }
        }
        free(x), free(out);
    }
}

/* A block with NaN or inf must not reach a float-to-int conversion (UB):
 * every ISA quantizes it to q = 0, corr = 0, d = NaN, and the products of
 * that token come out NaN, as f32 arithmetic would give; other blocks and
 * tokens are unaffected. */
static void test_q8a_nonfinite(void **state) {
    (void)state;
    const int T = 2, n_in = 96, n_out = 17, nb = n_in / LP_QK8;
    const float bad[] = {NAN, INFINITY, -INFINITY};
    for (const char *const *name = lp_kern_names(); *name; name++) {
        const lp_kernels *k = lp_kern_get(*name);
        if (!k) continue;
        for (int v = 0; v < COUNT(bad); v++) {
            rng g = {77};
            float *X = rand_vec(&g, T * n_in, -2, 2);
            X[LP_QK8 + 5] = bad[v]; /* token 0, block 1 */
            q8_acts xq;
            acts_quantize(&xq, k, X, T, n_in);
            assert_true(isnan(xq.d[1]));
            assert_int_equal(xq.corr[1], 0);
            for (int j = 0; j < LP_QK8; j++) assert_int_equal(xq.qs[LP_QK8 + j], 0);
            for (int b = 0; b < T * nb; b++)
                if (b != 1) assert_true(isfinite(xq.d[b]));
            lp_block_q8 *rows = rand_q8_full(&g, n_out * nb);
            uint8_t *W = pack_q8p(rows, n_out, n_in);
            float *Y = fill_vec(T * n_out, 0.0f);
            k->gemm_q8p(T, n_in, &xq.act, W, n_out, Y, n_out, 0, LP_Q8P_GROUPS(n_out));
            for (int r = 0; r < n_out; r++) {
                assert_true(isnan(Y[r]));
                assert_true(isfinite(Y[n_out + r]));
            }
            free(X), free(rows), free(W), free(Y);
            acts_free(&xq);
        }
    }
}

static void test_q8p_vs_double(void **state) {
    (void)state;
    static const int shapes[][3] = {{5, 2080, 37}, {3, 96, 16}, {1, 768, 100}}; /* T, n_in, n_out */
    for (const char *const *name = lp_kern_names(); *name; name++) {
        const lp_kernels *k = lp_kern_get(*name);
        if (!k) continue;
        rng g = {31337};
        for (int sh = 0; sh < COUNT(shapes); sh++) {
            const int T = shapes[sh][0], n_in = shapes[sh][1], n_out = shapes[sh][2];
            const int nb = n_in / LP_QK8, ldy = n_out + 1;
            float *X = rand_vec(&g, T * n_in, -3, 3);
            for (int i = 0; i < LP_QK8; i++) X[i] = 0.0f; /* an all-zero block */
            q8_acts xq;
            acts_quantize(&xq, k, X, T, n_in);
            for (int i = 0; i < T * nb; i++) {
                double amax = 0;
                int32_t sum = 0;
                for (int j = 0; j < LP_QK8; j++) amax = fmax(amax, fabs(X[i * LP_QK8 + j]));
                assert_true(fabs(xq.d[i] - amax / 127) <= amax / 127 * 0x1p-23);
                for (int j = 0; j < LP_QK8; j++) {
                    const double err = fabs(X[i * LP_QK8 + j] - (double)xq.d[i] * xq.qs[i * LP_QK8 + j]);
                    assert_true(err <= 0.5 * xq.d[i] * (1 + 0x1p-20));
                    sum += xq.qs[i * LP_QK8 + j];
                }
                assert_int_equal(xq.corr[i], -128 * sum);
            }
            lp_block_q8 *rows = rand_q8_full(&g, n_out * nb);
            uint8_t *W = pack_q8p(rows, n_out, n_in);
            float *Y = fill_vec(T * ldy, SENTINEL);
            k->gemm_q8p(T, n_in, &xq.act, W, n_out, Y, ldy, 0, LP_Q8P_GROUPS(n_out));
            for (int t = 0; t < T; t++) {
                assert_true(Y[t * ldy + n_out] == SENTINEL);
                for (int r = 0; r < n_out; r++) {
                    double want = 0, scale = 0;
                    for (int i = 0; i < n_in; i++) {
                        const lp_block_q8 *w = &rows[(size_t)r * nb + i / LP_QK8];
                        const double p = (double)xq.d[t * nb + i / LP_QK8] * xq.qs[t * n_in + i] *
                                         lp_f16_to_f32(w->d) * w->qs[i % LP_QK8];
                        want += p, scale += fabs(p);
                    }
                    const double tol = (nb + 2) * 0x1p-24 * scale;
                    if (fabs(Y[t * ldy + r] - want) > tol)
                        print_message("%s: T=%d n_in=%d [%d,%d]: got %.9g want %.9g (tol %.3g)\n",
                                      *name, T, n_in, t, r, Y[t * ldy + r], want, tol);
                    assert_true(fabs(Y[t * ldy + r] - want) <= tol);
                }
            }
            free(X), free(rows), free(W), free(Y);
            acts_free(&xq);
        }
    }
}

/* Naive double-precision causal GQA attention. */
static void test_scalar_attention(void **state) {
    (void)state;
    rng g = {99};
    static const int shapes[][5] = {{3, 4, 4, 2, 8}, {1, 0, 2, 1, 5}, {4, 2, 6, 3, 16}};
    for (int s = 0; s < COUNT(shapes); s++)
        for (int kv = 0; kv < 4; kv++) { /* f32 or f16 x layout */
            attn_case ac;
            attn_setup(&ac, &g, shapes[s], (kv & 1) ? LP_F16 : LP_F32, 1, kv >> 1);
            const lp_attn_args *A = &ac.a;
            const int T = A->T, nh = A->n_heads, hd = A->head_dim, nkv = A->n_kv_heads;
            const int f16 = kv & 1;
            float *out = malloc((size_t)T * nh * hd * 4);
            float *probs = malloc((size_t)nh * T * A->probs_ld * 4);
            lp_attn_args a = *A;
            a.out = out, a.probs = probs;
            lp_kernels_scalar.attention(&a, 0, nh);
            for (int h = 0; h < nh; h++)
                for (int t = 0; t < T; t++) {
                    const int nk = A->pos0 + t + 1, kh = h / (nh / nkv);
                    double sc[64], mx = -INFINITY, sum = 0;
                    for (int j = 0; j < nk; j++) {
                        double d = 0;
                        for (int i = 0; i < hd; i++) {
                            const size_t idx = j * A->kv_row_ld + kh * A->kv_head_ld + i;
                            const double kk = f16 ? lp_f16_to_f32(ac.kh[idx]) : ac.kf[idx];
                            d += (double)A->q[(t * nh + h) * hd + i] * kk;
                        }
                        sc[j] = d / sqrt(hd);
                        mx = fmax(mx, sc[j]);
                    }
                    for (int j = 0; j < nk; j++) sum += sc[j] = exp(sc[j] - mx);
                    const float *p = probs + ((size_t)h * T + t) * A->probs_ld;
                    for (int j = 0; j < A->probs_ld; j++)
                        assert_true(fabs(p[j] - (j < nk ? sc[j] / sum : 0.0)) < 1e-6);
                    for (int i = 0; i < hd; i++) {
                        double o = 0;
                        for (int j = 0; j < nk; j++) {
                            const size_t idx = j * A->kv_row_ld + kh * A->kv_head_ld + i;
                            o += sc[j] / sum * (f16 ? lp_f16_to_f32(ac.vh[idx]) : ac.vf[idx]);
                        }
                        assert_true(fabs(out[(t * nh + h) * hd + i] - o) < 1e-5);
                    }
                }
            free(out), free(probs);
            attn_free(&ac);
        }
}

/* ------------------------------------------------------------ dispatch */

/* LOUPE_ISA is read on first use; lp_kern_reset() repeats that choice.
 * expect_name NULL means the best runnable table (the first name of
 * lp_kern_names() that lp_kern_get accepts). Returns 0 if as expected. */
static int choice_with_isa(const char *value, const char *expect_name, const char *expect_text) {
    setenv("LOUPE_ISA", value, 1);
    lp_kern_reset();
    const lp_kernels *k = lp_kern();
    if (!expect_name)
        for (const char *const *n = lp_kern_names(); *n && !expect_name; n++)
            if (lp_kern_get(*n)) expect_name = *n;
    char rep[2048];
    lp_cpu_report(rep, sizeof rep);
    const int ok = k && strcmp(k->name, expect_name) == 0 && strstr(rep, expect_text) != NULL;
    if (!ok) print_message("LOUPE_ISA=%s: got %s, report:\n%s", value, k ? k->name : "-", rep);
    return ok ? 0 : 1;
}

static void assert_table_complete(const lp_kernels *k) {
    assert_non_null(k->name);
    assert_non_null(k->gemm_f32), assert_non_null(k->gemm_f16), assert_non_null(k->gemm_q8);
    assert_non_null(k->quantize_q8), assert_non_null(k->attention), assert_non_null(k->dot_f32);
    assert_non_null(k->gemm_q8p), assert_non_null(k->quantize_q8a);
    assert_non_null(k->rmsnorm), assert_non_null(k->layernorm), assert_non_null(k->softmax);
    assert_non_null(k->gelu_tanh), assert_non_null(k->gelu_erf), assert_non_null(k->swiglu);
    assert_non_null(k->rope), assert_non_null(k->add), assert_non_null(k->f16_to_f32);
    assert_non_null(k->f32_to_f16);
}

static void test_dispatch(void **state) {
    (void)state;
    const char *env = getenv("LOUPE_ISA");
    char saved[64] = "";
    if (env) snprintf(saved, sizeof saved, "%s", env);
    assert_int_equal(choice_with_isa("scalar", "scalar", "forced by LOUPE_ISA=scalar"), 0);
    assert_int_equal(choice_with_isa("SCALAR", "scalar", "forced"), 0);
    assert_int_equal(choice_with_isa("bogus", NULL, "LOUPE_ISA=bogus rejected"), 0);
    assert_int_equal(choice_with_isa("", NULL, "best available"), 0);
#if defined(__x86_64__)
    assert_int_equal(choice_with_isa("neon", NULL, "LOUPE_ISA=neon rejected"), 0);
#else
    assert_int_equal(choice_with_isa("avx2", NULL, "LOUPE_ISA=avx2 rejected"), 0);
#endif
    if (env) setenv("LOUPE_ISA", saved, 1); /* back to the caller's choice */
    else unsetenv("LOUPE_ISA");
    env = env ? saved : NULL;
    lp_kern_reset();

    const char *const *names = lp_kern_names();
    int has_scalar = 0;
    for (const char *const *n = names; *n; n++) has_scalar |= !strcmp(*n, "scalar");
    assert_true(has_scalar);
    assert_ptr_equal(lp_kern_get("scalar"), &lp_kernels_scalar);
    assert_null(lp_kern_get("bogus"));
    const char *best = NULL;
    for (const char *const *n = names; *n && !best; n++)
        if (lp_kern_get(*n)) best = *n;

    char rep[2048];
    size_t len = loupe_cpu_report(rep, sizeof rep);
    print_message("%s", rep);
    assert_true(len > 0 && len == strlen(rep));
    assert_non_null(strstr(rep, "chosen: "));
    assert_true(loupe_cpu_report(rep, 10) == 9);

    assert_int_equal(loupe_set_isa("bogus"), LOUPE_ERR_ISA);
    assert_non_null(strstr(loupe_last_error(), "bogus"));
#if defined(__x86_64__)
    assert_int_equal(loupe_set_isa("neon"), LOUPE_ERR_ISA);
    assert_non_null(strstr(loupe_last_error(), "neon"));
#endif
    for (const char *const *n = names; *n; n++) {
        const lp_kernels *k = lp_kern_get(*n);
        if (!k) {
            assert_int_equal(loupe_set_isa(*n), LOUPE_ERR_ISA);
            assert_int_equal(lp_kern_force(*n), -2);
            continue;
        }
        assert_table_complete(k);
        assert_int_equal(loupe_set_isa(*n), LOUPE_OK);
        assert_string_equal(loupe_isa(), *n);
        assert_ptr_equal(lp_kern(), k);
    }
    assert_int_equal(lp_kern_force("bogus"), -1);
    lp_kern_reset(); /* leave the choice LOUPE_ISA (or the CPU) makes */
    if (!env || !env[0] || !lp_kern_get(env)) assert_string_equal(loupe_isa(), best);
    else assert_ptr_equal(lp_kern(), lp_kern_get(env));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dispatch),
        cmocka_unit_test(test_scalar_f16),
        cmocka_unit_test(test_scalar_bf16),
        cmocka_unit_test(test_scalar_math),
        cmocka_unit_test(test_scalar_rope),
        cmocka_unit_test(test_scalar_q8),
        cmocka_unit_test(test_scalar_attention),
        cmocka_unit_test(test_q8p_pack),
        cmocka_unit_test(test_q8p_vs_double),
        cmocka_unit_test(test_q8a_nonfinite),
        cmocka_unit_test(test_q8a_tiny),
        cmocka_unit_test(test_kernels_vs_scalar),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
