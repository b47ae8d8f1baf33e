/*
 * scalar.h — scalar kernels that ISA tables borrow where they have no
 * version of their own (the reference twins live in scalar.c).
 */
#ifndef LOUPE_SIMD_SCALAR_H
#define LOUPE_SIMD_SCALAR_H

#include "kernels.h"

void lp_scalar_gemm_q8p(int T, int n_in, const lp_q8_act *X, const uint8_t *W, int n_out,
                        float *Y, int ldy, int g0, int g1);
void lp_scalar_quantize_q8a(const float *x, int n, int8_t *qs, float *d, int32_t *corr);

#endif
