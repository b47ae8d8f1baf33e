/*
 * forward.h — the transformer forward pass over a batch of tokens.
 */
#ifndef LOUPE_FORWARD_H
#define LOUPE_FORWARD_H

#include "session.h"

/* Runs T tokens at positions s->pos .. s->pos+T-1 (T <= s->cap_T), appends
 * their keys/values to the cache and advances s->pos.
 * logits: (T, n_vocab) if all_logits, else (n_vocab) for the last token;
 * NULL to skip the head. */
loupe_status lp_forward(loupe_session *s, const int32_t *tokens, int T,
                        float *logits, int all_logits);

/* What a product's tasks do to their columns of Y right after computing
 * them, while those are still in cache: Y += bias, then Y = act(Y), then
 * resid += Y, then Y quantized for the next int8 matmul. Saves a pass over
 * Y (and a pool round trip) per step. */
typedef enum { LP_EPI_NONE, LP_EPI_GELU_TANH, LP_EPI_GELU_ERF } lp_epi_act;
struct lp_quant_job;

/* One product of a shared input: Y (T, ldy) columns [0, W->rows), and its
 * epilogue (fields left zero: none). */
typedef struct {
    float *Y;
    int ldy;
    const lp_mat *W;
    const float *bias; /* (W->rows) or NULL */
    lp_epi_act act;
    float *resid;      /* (T, ldy) += Y, or NULL */
    const struct lp_quant_job *quant; /* Y (T, ldy = its n) into it, or NULL;
                                         int8 W of rows % 32 == 0 only */
} lp_matmul_out;

/* The n (<= 3) products X (T, cols) · W_pᵀ as one threaded job (X quantized
 * once); products of different types or widths run one after another. */
void lp_matmul_n(loupe_session *s, const float *X, int T, int n, const lp_matmul_out *out);

/* Y (T, ldy) rows [0, W->rows) = X (T, W->cols) · Wᵀ, threaded over rows. */
void lp_matmul(loupe_session *s, float *Y, int ldy, const float *X, int T,
               const lp_mat *W);

#endif
