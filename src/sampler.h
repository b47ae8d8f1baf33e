/*
 * sampler.h — from logits to the next token: penalties, temperature,
 * truncation (top-k, top-p, min-p) and a seeded, portable RNG. Pure code:
 * no model, no session, so it is tested on hand-made logits.
 *
 * Order of application (the Hugging Face `generate` order):
 *   1. penalties over the last penalty_last_n tokens of the history:
 *      repetition (logit > 0 ? logit / r : logit * r, once per distinct
 *      token), presence (logit -= presence if the token occurs), frequency
 *      (logit -= frequency * count);
 *   2. temperature: logits / T (T == 0: greedy argmax, ties -> lowest id;
 *      steps 3-5 are skipped);
 *   3. top-k: keep the k most likely (exactly k; ties -> lowest ids);
 *   4. top-p: of what is left, renormalised, keep the smallest most-likely
 *      prefix whose mass is >= p (at least one token);
 *   5. min-p: keep tokens whose probability is >= min_p * the largest;
 *   6. draw from the survivors, renormalised.
 * The reported log-probability of the chosen token is its log-softmax over
 * the whole vocabulary after steps 1-2 (T = 1 for greedy), i.e. before
 * truncation, so it does not depend on top-k/top-p/min-p.
 */
#ifndef LOUPE_SAMPLER_H
#define LOUPE_SAMPLER_H

#include <stddef.h>
#include <stdint.h>

#include "loupe.h"

/* ------------------------------------------------------------------- RNG */

/* PCG32 (XSH-RR, 64-bit state, M. O'Neill): the same numbers on every
 * platform for the same seed. */
typedef struct {
    uint64_t state;
    uint64_t inc; /* stream selector, always odd */
} lp_rng;

/* Seeds like the reference pcg32_srandom_r(initstate, initseq). */
void lp_rng_seed_stream(lp_rng *r, uint64_t initstate, uint64_t initseq);
/* Seeds from one number (fixed stream). */
void lp_rng_seed(lp_rng *r, uint64_t seed);
uint32_t lp_rng_u32(lp_rng *r);
/* Uniform double in [0, 1) with 53 random bits. */
double lp_rng_uniform(lp_rng *r);

/* --------------------------------------------------------------- sampler */

typedef struct {
    float logit; /* penalised, tempered */
    int32_t id;
} lp_cand;

typedef struct {
    loupe_sampling p;
    lp_rng rng;
    int n_vocab;
    float *work;     /* (n_vocab) penalised, tempered logits */
    double *weight;  /* (n_vocab) exp(work - max) by token id */
    lp_cand *cand;   /* (n_vocab) candidates, most likely first */
    int32_t *count;  /* (n_vocab) scratch occurrence counts, kept zero */
    /* token history for penalties: ring of the last cap_hist ids */
    int32_t *hist;   /* (cap_hist) */
    int cap_hist;    /* penalty window; grows when penalty_last_n == -1 */
    int n_hist;      /* ids stored (<= cap_hist) */
    int head_hist;   /* next slot to write */
} lp_sampler;

/* Checks the parameters (temperature >= 0, top_k >= 0, top_p in (0,1],
 * min_p in [0,1], repeat_penalty > 0, finite penalties, penalty_last_n
 * >= -1); LOUPE_ERR_ARG naming the bad field. */
loupe_status lp_sampling_check(const loupe_sampling *p);

loupe_status lp_sampler_new(const loupe_sampling *p, int n_vocab,
                            lp_sampler **out);
void lp_sampler_free(lp_sampler *s);
/* Appends a token to the penalty history (prompt and generated tokens). */
loupe_status lp_sampler_accept(lp_sampler *s, int32_t id);

/* Applies step 1 (penalties) to logits in place: (n_vocab). */
void lp_sampler_penalize(lp_sampler *s, float *logits);

/* Steps 1-5: the final distribution. Writes the surviving ids and their
 * probabilities (summing to 1) into ids / probs (n_vocab capacity each) and
 * returns their count. The order is most likely first (ties -> lowest id)
 * when a truncation is on, token id order otherwise. For greedy it is the
 * single argmax with probability 1. */
int lp_sampler_dist(lp_sampler *s, const float *logits, int32_t *ids,
                    double *probs);

/* Steps 1-6: chooses the next token from logits (n_vocab). *logprob (may
 * be NULL) receives its log-probability as described above. */
int32_t lp_sampler_sample(lp_sampler *s, const float *logits, float *logprob);

/* The k most likely tokens of the raw model distribution (log-softmax of
 * logits, no penalties, no temperature), most likely first, ties -> lowest
 * id. ids, logprobs: (k). Returns min(k, n_vocab). */
int lp_top_logprobs(const float *logits, int n_vocab, int k, int32_t *ids,
                    float *logprobs);

/* ---------------------------------------------------------- stop strings */

/* Decides how much of the held-back text `held` (len bytes, generated but
 * not yet shown) can be emitted. If a stop string occurs, *emit is the
 * offset of its first occurrence and the return is 1 (the stop string and
 * all after it are dropped). Otherwise the return is 0 and *emit is the
 * length of the longest prefix that cannot be the start of a stop string:
 * the rest must be held until more text arrives. Offsets never split a
 * UTF-8 character. */
int lp_stop_scan(const char *held, size_t len, const char *const *stop,
                 int n_stop, size_t *emit);

#endif
