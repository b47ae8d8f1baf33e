/*
 * imath.c — small numeric pieces of the interp methods: RNG, log-softmax,
 * top-k, divergences, attention rollout.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../error.h"
#include "interp.h"

/* ------------------------------------------------------------ RNG */

uint64_t lp_rng_next(uint64_t *state) {
    uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

int lp_rng_below(uint64_t *state, int n) {
    /* rejection keeps it unbiased */
    uint64_t limit = UINT64_MAX - UINT64_MAX % (uint64_t)n;
    uint64_t r;
    do r = lp_rng_next(state);
    while (r >= limit);
    return (int)(r % (uint64_t)n);
}

/* ------------------------------------------------------------ distributions */

void lp_log_softmax(const float *x, int n, float *out) {
    double mx = -INFINITY;
    for (int i = 0; i < n; i++)
        if (x[i] > mx) mx = x[i];
    double sum = 0;
    for (int i = 0; i < n; i++) sum += exp((double)x[i] - mx);
    double lse = mx + log(sum);
    for (int i = 0; i < n; i++) out[i] = (float)((double)x[i] - lse);
}

void lp_top_k(const float *x, int n, int k, int32_t *idx) {
    if (k > n) k = n;
    int filled = 0;
    for (int i = 0; i < n; i++) {
        /* insertion into the sorted prefix idx[0..filled) */
        if (filled == k && !(x[i] > x[idx[k - 1]])) continue;
        int j = filled < k ? filled++ : k - 1;
        while (j > 0 && x[i] > x[idx[j - 1]]) {
            idx[j] = idx[j - 1];
            j--;
        }
        idx[j] = i;
    }
}

double lp_js_divergence(const float *p, const float *q, int n) {
    double js = 0;
    for (int i = 0; i < n; i++) {
        double a = p[i], b = q[i], m = 0.5 * (a + b);
        if (a > 0) js += 0.5 * a * log2(a / m);
        if (b > 0) js += 0.5 * b * log2(b / m);
    }
    return js < 0 ? 0 : js;
}

double lp_kl_logp(const float *logp, const float *logq, int n) {
    double kl = 0;
    for (int i = 0; i < n; i++) {
        double p = exp((double)logp[i]);
        if (p > 0) kl += p * ((double)logp[i] - (double)logq[i]);
    }
    return kl < 0 ? 0 : kl;
}

/* ------------------------------------------------------------ rollout */

loupe_status loupe_attention_rollout(const float *patterns, int n_layers, int n_heads, int T,
                                     float *rollout) {
    if (!patterns || !rollout || n_layers <= 0 || n_heads <= 0 || T <= 0)
        return lp_fail(LOUPE_ERR_ARG, "loupe_attention_rollout: bad arguments");
    size_t TT = (size_t)T * T;
    double *R = malloc(TT * sizeof *R);    /* (T, T) rollout so far */
    double *A = malloc(TT * sizeof *A);    /* (T, T) this layer's (A + I) / 2 */
    double *tmp = malloc(TT * sizeof *tmp);
    if (!R || !A || !tmp) {
        free(R), free(A), free(tmp);
        return lp_fail(LOUPE_ERR_NOMEM, "out of memory for a %dx%d rollout", T, T);
    }
    for (size_t i = 0; i < TT; i++) R[i] = (i / T == i % T);
    for (int l = 0; l < n_layers; l++) {
        const float *P = patterns + (size_t)l * n_heads * TT; /* (H, T, T) */
        for (int q = 0; q < T; q++) {
            double row = 0;
            for (int k = 0; k < T; k++) {
                double a = 0;
                for (int h = 0; h < n_heads; h++) a += P[(size_t)h * TT + (size_t)q * T + k];
                a = a / n_heads + (q == k);
                A[(size_t)q * T + k] = a;
                row += a;
            }
            for (int k = 0; k < T; k++) A[(size_t)q * T + k] /= row;
        }
        /* R = A · R: later layers multiply on the left */
        for (int q = 0; q < T; q++)
            for (int k = 0; k < T; k++) {
                double acc = 0;
                for (int j = 0; j < T; j++) acc += A[(size_t)q * T + j] * R[(size_t)j * T + k];
                tmp[(size_t)q * T + k] = acc;
            }
        memcpy(R, tmp, TT * sizeof *R);
    }
    for (size_t i = 0; i < TT; i++) rollout[i] = (float)R[i];
    free(R), free(A), free(tmp);
    return LOUPE_OK;
}
