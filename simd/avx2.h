/*
 * avx2.h — AVX2 kernels that the AVX-512 table reuses where 512-bit
 * vectors gain nothing (memory-bound or short vector ops). Only for
 * simd/avx512.c; callers must have checked AVX2+FMA+F16C support.
 */
#ifndef LOUPE_SIMD_AVX2_H
#define LOUPE_SIMD_AVX2_H

#include "kernels.h"

extern const lp_kernels lp_kernels_avx2;

void lp_avx2_quantize_q8(const float *x, lp_block_q8 *y, int n);
void lp_avx2_attention(const lp_attn_args *a, int h0, int h1);
void lp_avx2_rmsnorm(float *out, const float *x, const float *w, int n, float eps);
void lp_avx2_layernorm(float *out, const float *x, const float *w, const float *b, int n,
                       float eps);
void lp_avx2_rope(float *x, int n_heads, int head_dim, int rot_dim, const float *cs,
                  const float *sn, int neox);
void lp_avx2_add(float *y, const float *x, int n);
void lp_avx2_f16_to_f32(const uint16_t *x, float *y, int n);
void lp_avx2_f32_to_f16(const float *x, uint16_t *y, int n);

#endif /* LOUPE_SIMD_AVX2_H */
