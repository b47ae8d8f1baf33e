/*
 * scalar.c — the reference implementation of every kernel in kernels.h.
 *
 * Plain C, fp32 accumulation, no intrinsics. Every ISA table is tested
 * against this one, so it favours obviousness over speed. The int8 path
 * follows GGUF Q8_0 exactly: per-block int32 dot, then times both fp16
 * block scales, summed in float.
 */
#include "kernels.h"

#include <math.h>
#include <string.h>

/* ------------------------------------------------------------------ gemm */

static void gemm_f32(int T, int n_in, const float *X, const float *W,
                     float *Y, int ldy, int r0, int r1) {
    for (int t = 0; t < T; t++) {
        const float *x = X + (size_t)t * n_in; // (n_in)
        for (int r = r0; r < r1; r++) {
            const float *w = W + (size_t)r * n_in; // (n_in)
            float acc = 0.0f;
            for (int i = 0; i < n_in; i++) acc += x[i] * w[i];
            Y[(size_t)t * ldy + r] = acc;
        }
    }
}

static void gemm_f16(int T, int n_in, const float *X, const uint16_t *W,
                     float *Y, int ldy, int r0, int r1) {
    for (int t = 0; t < T; t++) {
        const float *x = X + (size_t)t * n_in; // (n_in)
        for (int r = r0; r < r1; r++) {
            const uint16_t *w = W + (size_t)r * n_in; // (n_in) fp16
            float acc = 0.0f;
            for (int i = 0; i < n_in; i++) acc += x[i] * lp_f16_to_f32(w[i]);
            Y[(size_t)t * ldy + r] = acc;
        }
    }
}

/* Dot product of two int8 blocks, exact in int32. */
static int32_t dot_block_q8(const lp_block_q8 *a, const lp_block_q8 *b) {
    int32_t s = 0;
    for (int j = 0; j < LP_QK8; j++) s += (int32_t)a->qs[j] * (int32_t)b->qs[j];
    return s;
}

static void gemm_q8(int T, int n_in, const lp_block_q8 *Xq,
                    const lp_block_q8 *W, float *Y, int ldy, int r0, int r1) {
    const int nb = n_in / LP_QK8;
    for (int t = 0; t < T; t++) {
        const lp_block_q8 *x = Xq + (size_t)t * nb; // (nb)
        for (int r = r0; r < r1; r++) {
            const lp_block_q8 *w = W + (size_t)r * nb; // (nb)
            float acc = 0.0f;
            for (int b = 0; b < nb; b++)
                acc += (float)dot_block_q8(&x[b], &w[b]) *
                       (lp_f16_to_f32(x[b].d) * lp_f16_to_f32(w[b].d));
            Y[(size_t)t * ldy + r] = acc;
        }
    }
}

/* Scale d = max|x| / 127 stored as fp16; the values are divided by the
 * fp32 d (as multiplication by 1/d, like GGUF's reference quantizer) and
 * rounded half away from zero. */
static void quantize_q8(const float *x, lp_block_q8 *y, int n) {
    for (int b = 0; b < n / LP_QK8; b++) {
        const float *xb = x + (size_t)b * LP_QK8; // (32)
        float amax = 0.0f;
        for (int j = 0; j < LP_QK8; j++) amax = fmaxf(amax, fabsf(xb[j]));
        const float d = amax / 127.0f;
        const float id = lp_q8_inverse(d);
        y[b].d = lp_f32_to_f16(d);
        for (int j = 0; j < LP_QK8; j++) y[b].qs[j] = (int8_t)roundf(xb[j] * id);
    }
}

/* ------------------------------------------------------ gemm q8 packed */

/* Block b of the group at grp: d (16) scales, qs (8, 16, 4) biased values. */
static const uint16_t *q8p_d(const uint8_t *grp, int b) {
    return (const uint16_t *)(const void *)(grp + (size_t)b * LP_Q8P_ROWS * 2);
}

static const uint8_t *q8p_qs(const uint8_t *grp, int nb, int b) {
    return grp + (size_t)nb * LP_Q8P_ROWS * 2 + (size_t)b * LP_Q8P_ROWS * LP_QK8;
}

/* The integer part the SIMD kernels compute: sum over the block of
 * (q_w + 128) * q_x, plus corr = -128 * sum(q_x), which is dot(q_w, q_x). */
static int32_t dot_block_q8p(const uint8_t *qs, int i, const int8_t *x, int32_t corr) {
    int32_t s = corr;
    for (int j = 0; j < LP_QK8 / 4; j++)
        for (int k = 0; k < 4; k++)
            s += (int32_t)qs[(j * LP_Q8P_ROWS + i) * 4 + k] * x[4 * j + k];
    return s;
}

static void gemm_q8p(int T, int n_in, const lp_q8_act *X, const uint8_t *W, int n_out,
                     float *Y, int ldy, int g0, int g1) {
    const int nb = n_in / LP_QK8;
    for (int g = g0; g < g1; g++) {
        const uint8_t *grp = W + (size_t)g * LP_Q8P_GROUP_BYTES(n_in); // (nb, 544)
        for (int i = 0; i < LP_Q8P_ROWS && g * LP_Q8P_ROWS + i < n_out; i++) {
            for (int t = 0; t < T; t++) {
                const int8_t *xq = X->qs + (size_t)t * n_in; // (n_in)
                const float *xd = X->d + (size_t)t * nb;     // (nb)
                const int32_t *xc = X->corr + (size_t)t * nb; // (nb)
                float acc = 0.0f;
                for (int b = 0; b < nb; b++) {
                    const int32_t s = dot_block_q8p(q8p_qs(grp, nb, b), i, xq + b * LP_QK8, xc[b]);
                    acc += (float)s * (xd[b] * lp_f16_to_f32(q8p_d(grp, b)[i]));
                }
                Y[(size_t)t * ldy + g * LP_Q8P_ROWS + i] = acc;
            }
        }
    }
}

static void quantize_q8a(const float *x, int n, int8_t *qs, float *d, int32_t *corr) {
    for (int b = 0; b < n / LP_QK8; b++) {
        const float *xb = x + (size_t)b * LP_QK8; // (32)
        float amax = 0.0f;
        int finite = 1;
        for (int j = 0; j < LP_QK8; j++) {
            amax = fmaxf(amax, fabsf(xb[j]));
            finite &= isfinite(xb[j]) != 0;
        }
        if (!finite) { /* NaN or inf: the block's products become NaN */
            lp_q8a_nonfinite(qs + b * LP_QK8, &d[b], &corr[b]);
            continue;
        }
        d[b] = amax / 127.0f;
        const float id = lp_q8_inverse(d[b]);
        int32_t sum = 0;
        for (int j = 0; j < LP_QK8; j++) {
            qs[b * LP_QK8 + j] = (int8_t)roundf(xb[j] * id);
            sum += qs[b * LP_QK8 + j];
        }
        corr[b] = -128 * sum;
    }
}

/* ------------------------------------------------------------- attention */

/* Element j of a row of a KV cache of type kv_type. */
static float kv_at(const void *base, lp_dtype type, size_t idx) {
    if (type == LP_F16) return lp_f16_to_f32(((const uint16_t *)base)[idx]);
    return ((const float *)base)[idx];
}

static void softmax(float *x, int n);

static void attention(const lp_attn_args *a, int h0, int h1) {
    const int hd = a->head_dim;
    const size_t q_ld = (size_t)a->n_heads * hd; // row stride of q, out
    const size_t kv_ld = a->kv_row_ld;            // row stride of k, v
    float *score = a->scratch;                        // (pos0+T)
    for (int h = h0; h < h1; h++) {
        const size_t kv_off = lp_attn_kv_off(a, h);
        for (int t = 0; t < a->T; t++) {
            const int n_keys = a->pos0 + t + 1; // causal: keys 0..own position
            const float *q = a->q + t * q_ld + (size_t)h * hd; // (hd)
            for (int j = 0; j < n_keys; j++) {
                float s = 0.0f;
                for (int i = 0; i < hd; i++)
                    s += q[i] * kv_at(a->k, a->kv_type, j * kv_ld + kv_off + i);
                score[j] = s * a->scale;
            }
            softmax(score, n_keys);
            float *out = a->out + t * q_ld + (size_t)h * hd; // (hd)
            for (int i = 0; i < hd; i++) out[i] = 0.0f;
            for (int j = 0; j < n_keys; j++)
                for (int i = 0; i < hd; i++)
                    out[i] += score[j] * kv_at(a->v, a->kv_type, j * kv_ld + kv_off + i);
            if (a->probs) {
                float *p = a->probs + ((size_t)h * a->T + t) * a->probs_ld; // (probs_ld)
                for (int j = 0; j < a->probs_ld; j++) p[j] = j < n_keys ? score[j] : 0.0f;
            }
        }
    }
}

/* ------------------------------------------------------------ vector ops */

static float dot_f32(const float *a, const float *b, int n) {
    float acc = 0.0f;
    for (int i = 0; i < n; i++) acc += a[i] * b[i];
    return acc;
}

static void rmsnorm(float *out, const float *x, const float *w, int n, float eps) {
    float ss = 0.0f;
    for (int i = 0; i < n; i++) ss += x[i] * x[i];
    const float inv = 1.0f / sqrtf(ss / (float)n + eps);
    for (int i = 0; i < n; i++) out[i] = x[i] * inv * w[i];
}

/* Biased variance (divide by n), as torch.nn.LayerNorm. b may be NULL. */
static void layernorm(float *out, const float *x, const float *w,
                      const float *b, int n, float eps) {
    float mean = 0.0f;
    for (int i = 0; i < n; i++) mean += x[i];
    mean /= (float)n;
    float var = 0.0f;
    for (int i = 0; i < n; i++) var += (x[i] - mean) * (x[i] - mean);
    var /= (float)n;
    const float inv = 1.0f / sqrtf(var + eps);
    for (int i = 0; i < n; i++)
        out[i] = (x[i] - mean) * inv * w[i] + (b ? b[i] : 0.0f);
}

static void softmax(float *x, int n) {
    float max = x[0];
    for (int i = 1; i < n; i++) max = fmaxf(max, x[i]);
    float sum = 0.0f;
    for (int i = 0; i < n; i++) {
        x[i] = expf(x[i] - max);
        sum += x[i];
    }
    const float inv = 1.0f / sum;
    for (int i = 0; i < n; i++) x[i] *= inv;
}

static void gelu_tanh(float *x, int n) {
    const float k = 0.7978845608028654f; // sqrt(2/pi)
    for (int i = 0; i < n; i++) {
        const float v = x[i];
        x[i] = 0.5f * v * (1.0f + tanhf(k * (v + 0.044715f * v * v * v)));
    }
}

static void gelu_erf(float *x, int n) {
    for (int i = 0; i < n; i++)
        x[i] = 0.5f * x[i] * (1.0f + erff(x[i] * 0.7071067811865476f));
}

static void swiglu(float *out, const float *gate, const float *up, int n) {
    for (int i = 0; i < n; i++)
        out[i] = gate[i] / (1.0f + expf(-gate[i])) * up[i];
}

static void rope(float *x, int n_heads, int head_dim, int rot_dim,
                 const float *cs, const float *sn, int neox) {
    const int half = rot_dim / 2;
    for (int h = 0; h < n_heads; h++) {
        float *v = x + (size_t)h * head_dim; // (head_dim)
        for (int i = 0; i < half; i++) {
            const int i0 = neox ? i : 2 * i;
            const int i1 = neox ? i + half : 2 * i + 1;
            const float a = v[i0], b = v[i1];
            v[i0] = a * cs[i] - b * sn[i];
            v[i1] = a * sn[i] + b * cs[i];
        }
    }
}

static void add(float *y, const float *x, int n) {
    for (int i = 0; i < n; i++) y[i] += x[i];
}

static void f16_to_f32(const uint16_t *x, float *y, int n) {
    for (int i = 0; i < n; i++) y[i] = lp_f16_to_f32(x[i]);
}

static void f32_to_f16(const float *x, uint16_t *y, int n) {
    for (int i = 0; i < n; i++) y[i] = lp_f32_to_f16(x[i]);
}

/* ------------------------------------------------------------------ bf16 */

/* f32 -> bf16, round to nearest even; NaN stays a (quiet) NaN; a denormal
 * input gives a signed zero, as vcvtne2ps2bf16 does. */
uint16_t lp_ref_bf16_round(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
    if ((u & 0x7f800000u) == 0) return (uint16_t)((u >> 16) & 0x8000);
    u += 0x7fffu + ((u >> 16) & 1);
    return (uint16_t)(u >> 16);
}

void lp_ref_f32_to_bf16(const float *x, uint16_t *y, int n) {
    for (int i = 0; i < n; i++) y[i] = lp_ref_bf16_round(x[i]);
}

/* Products of two bf16 values are exact in f32 and in double; the sum is
 * taken in double here, so the kernel's f32 sums differ from it only by
 * their own rounding (the tolerance of test_kernels). */
void lp_ref_gemm_f16_bf16(int T, int n_in, const uint16_t *Xb, const uint16_t *W, float *Y,
                          int ldy, int r0, int r1) {
    for (int t = 0; t < T; t++) {
        const uint16_t *x = Xb + (size_t)t * n_in; // (n_in)
        for (int r = r0; r < r1; r++) {
            const uint16_t *w = W + (size_t)r * n_in; // (n_in)
            double acc = 0.0;
            for (int i = 0; i < n_in; i++) {
                float xv = lp_bf16_to_f32(x[i]);
                float wv = lp_bf16_to_f32(lp_ref_bf16_round(lp_f16_to_f32(w[i])));
                if (fpclassify(xv) == FP_SUBNORMAL) xv = 0.0f;
                acc += (double)xv * (double)wv;
            }
            Y[(size_t)t * ldy + r] = (float)acc;
        }
    }
}

/* ----------------------------------------------------------------- table */

const lp_kernels lp_kernels_scalar = {
    .name = "scalar",
    .gemm_f32 = gemm_f32,
    .gemm_f16 = gemm_f16,
    .gemm_q8 = gemm_q8,
    .quantize_q8 = quantize_q8,
    .gemm_q8p = gemm_q8p,
    .quantize_q8a = quantize_q8a,
    .attention = attention,
    .dot_f32 = dot_f32,
    .rmsnorm = rmsnorm,
    .layernorm = layernorm,
    .softmax = softmax,
    .gelu_tanh = gelu_tanh,
    .gelu_erf = gelu_erf,
    .swiglu = swiglu,
    .rope = rope,
    .add = add,
    .f16_to_f32 = f16_to_f32,
    .f32_to_f16 = f32_to_f16,
};
