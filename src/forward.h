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

/* Y (T, ldy) rows [0, W->rows) = X (T, W->cols) · Wᵀ, threaded over rows. */
void lp_matmul(loupe_session *s, float *Y, int ldy, const float *X, int T,
               const lp_mat *W);

#endif
