/*
 * sampler.c — penalties, temperature, top-k / top-p / min-p and a PCG32
 * draw. The order of the steps is documented in sampler.h.
 */
#include "sampler.h"

#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"

/* ------------------------------------------------------------------- RNG */

#define LP_PCG_MULT 6364136223846793005ULL
#define LP_RNG_STREAM 0x6c6f757065ULL /* "loupe": the stream of lp_rng_seed */

uint32_t lp_rng_u32(lp_rng *r) {
    uint64_t old = r->state;
    r->state = old * LP_PCG_MULT + r->inc;
    uint32_t xorshifted = (uint32_t)(((old >> 18) ^ old) >> 27);
    uint32_t rot = (uint32_t)(old >> 59);
    return (xorshifted >> rot) | (xorshifted << ((32 - rot) & 31));
}

void lp_rng_seed_stream(lp_rng *r, uint64_t initstate, uint64_t initseq) {
    r->state = 0;
    r->inc = (initseq << 1) | 1;
    lp_rng_u32(r);
    r->state += initstate;
    lp_rng_u32(r);
}

void lp_rng_seed(lp_rng *r, uint64_t seed) {
    lp_rng_seed_stream(r, seed, LP_RNG_STREAM);
}

double lp_rng_uniform(lp_rng *r) {
    uint32_t a = lp_rng_u32(r) >> 5; /* 27 bits */
    uint32_t b = lp_rng_u32(r) >> 6; /* 26 bits */
    return ((double)a * 67108864.0 + (double)b) * (1.0 / 9007199254740992.0);
}

/* ------------------------------------------------------------ parameters */

/* llama.cpp's defaults: a little below T = 1, with the usual truncations. */
void loupe_sampling_default(loupe_sampling *s) {
    memset(s, 0, sizeof *s);
    s->temperature = 0.8f;
    s->top_k = 40;
    s->top_p = 0.95f;
    s->min_p = 0.05f;
    s->repeat_penalty = 1.0f;
    s->presence_penalty = 0.0f;
    s->frequency_penalty = 0.0f;
    s->penalty_last_n = 64;
    s->seed = 0;
}

loupe_status lp_sampling_check(const loupe_sampling *p) {
    if (!p) return lp_fail(LOUPE_ERR_ARG, "sampling: parameters are NULL");
    if (!(p->temperature >= 0) || isinf(p->temperature))
        return lp_fail(LOUPE_ERR_ARG, "sampling: temperature %g must be >= 0",
                       p->temperature);
    if (p->top_k < 0)
        return lp_fail(LOUPE_ERR_ARG, "sampling: top_k %d must be >= 0 (0 = off)",
                       p->top_k);
    if (!(p->top_p > 0 && p->top_p <= 1))
        return lp_fail(LOUPE_ERR_ARG, "sampling: top_p %g must be in (0, 1]",
                       p->top_p);
    if (!(p->min_p >= 0 && p->min_p <= 1))
        return lp_fail(LOUPE_ERR_ARG, "sampling: min_p %g must be in [0, 1]",
                       p->min_p);
    if (!(p->repeat_penalty > 0) || isinf(p->repeat_penalty))
        return lp_fail(LOUPE_ERR_ARG, "sampling: repeat_penalty %g must be > 0",
                       p->repeat_penalty);
    if (!isfinite(p->presence_penalty) || !isfinite(p->frequency_penalty))
        return lp_fail(LOUPE_ERR_ARG,
                       "sampling: presence/frequency penalties must be finite");
    if (p->penalty_last_n < -1)
        return lp_fail(LOUPE_ERR_ARG,
                       "sampling: penalty_last_n %d must be >= -1 (-1 = all)",
                       p->penalty_last_n);
    return LOUPE_OK;
}

/* --------------------------------------------------------------- sampler */

loupe_status lp_sampler_new(const loupe_sampling *p, int n_vocab,
                            lp_sampler **out) {
    *out = NULL;
    LP_TRY(lp_sampling_check(p));
    if (n_vocab < 1)
        return lp_fail(LOUPE_ERR_ARG, "sampler: n_vocab %d must be >= 1", n_vocab);
    lp_sampler *s = calloc(1, sizeof *s);
    if (!s) return lp_fail(LOUPE_ERR_NOMEM, "sampler: out of memory");
    s->p = *p;
    s->n_vocab = n_vocab;
    lp_rng_seed(&s->rng, p->seed);
    s->cap_hist = p->penalty_last_n == -1 ? 256 : p->penalty_last_n;
    s->work = malloc((size_t)n_vocab * sizeof *s->work);
    s->weight = malloc((size_t)n_vocab * sizeof *s->weight);
    s->cand = malloc((size_t)n_vocab * sizeof *s->cand);
    s->count = calloc((size_t)n_vocab, sizeof *s->count);
    s->hist = s->cap_hist > 0 ? malloc((size_t)s->cap_hist * sizeof *s->hist) : NULL;
    if (!s->work || !s->weight || !s->cand || !s->count ||
        (s->cap_hist > 0 && !s->hist)) {
        lp_sampler_free(s);
        return lp_fail(LOUPE_ERR_NOMEM, "sampler: out of memory (n_vocab %d)",
                       n_vocab);
    }
    *out = s;
    return LOUPE_OK;
}

void lp_sampler_free(lp_sampler *s) {
    if (!s) return;
    free(s->work);
    free(s->weight);
    free(s->cand);
    free(s->count);
    free(s->hist);
    free(s);
}

loupe_status lp_sampler_accept(lp_sampler *s, int32_t id) {
    if (id < 0 || id >= s->n_vocab)
        return lp_fail(LOUPE_ERR_ARG, "sampler: token id %d outside [0, %d)",
                       (int)id, s->n_vocab);
    if (s->p.penalty_last_n == 0) return LOUPE_OK;
    if (s->p.penalty_last_n == -1 && s->n_hist == s->cap_hist) {
        /* whole-history mode: grow instead of wrapping */
        int32_t *h = realloc(s->hist, 2 * (size_t)s->cap_hist * sizeof *h);
        if (!h) return lp_fail(LOUPE_ERR_NOMEM, "sampler: out of memory");
        s->hist = h;
        s->head_hist = s->n_hist; /* the ring had wrapped to 0 */
        s->cap_hist *= 2;
    }
    s->hist[s->head_hist] = id;
    s->head_hist = (s->head_hist + 1) % s->cap_hist;
    if (s->n_hist < s->cap_hist) s->n_hist++;
    return LOUPE_OK;
}

/* ------------------------------------------------------------- penalties */

void lp_sampler_penalize(lp_sampler *s, float *logits) {
    const loupe_sampling *p = &s->p;
    if (p->repeat_penalty == 1.0f && p->presence_penalty == 0.0f &&
        p->frequency_penalty == 0.0f)
        return;
    /* the window holds repeats: count first, then touch each distinct id
     * once and zero its count so it is not touched again */
    for (int i = 0; i < s->n_hist; i++) s->count[s->hist[i]]++;
    for (int i = 0; i < s->n_hist; i++) {
        int32_t id = s->hist[i];
        int32_t c = s->count[id];
        if (c == 0) continue;
        float l = logits[id];
        l = l > 0 ? l / p->repeat_penalty : l * p->repeat_penalty;
        l -= p->presence_penalty + p->frequency_penalty * (float)c;
        logits[id] = l;
        s->count[id] = 0;
    }
}

/* ------------------------------------------------------------ candidates */

/* a ranks before b: larger logit, then lower id */
static int cand_before(const lp_cand *a, const lp_cand *b) {
    return a->logit > b->logit || (a->logit == b->logit && a->id < b->id);
}

static int cand_cmp(const void *pa, const void *pb) {
    const lp_cand *a = pa, *b = pb;
    if (cand_before(a, b)) return -1;
    if (cand_before(b, a)) return 1;
    return 0;
}

/* Min-heap on rank (root = the worst kept) for top-k selection. */
static void heap_sift_down(lp_cand *h, int n, int i) {
    for (;;) {
        int worst = i, l = 2 * i + 1, r = l + 1;
        if (l < n && cand_before(&h[worst], &h[l])) worst = l;
        if (r < n && cand_before(&h[worst], &h[r])) worst = r;
        if (worst == i) return;
        lp_cand t = h[i];
        h[i] = h[worst];
        h[worst] = t;
        i = worst;
    }
}

static void heap_sift_up(lp_cand *h, int i) {
    while (i > 0) {
        int parent = (i - 1) / 2;
        if (!cand_before(&h[parent], &h[i])) return;
        lp_cand t = h[i];
        h[i] = h[parent];
        h[parent] = t;
        i = parent;
    }
}

/* The k best of work (n) into cand, sorted; returns k. */
static int select_top_k(const float *work, int n, int k, lp_cand *cand) {
    int m = 0;
    for (int i = 0; i < n; i++) {
        lp_cand c = {work[i], i};
        if (m < k) {
            cand[m] = c;
            heap_sift_up(cand, m++);
        } else if (cand_before(&c, &cand[0])) {
            cand[0] = c;
            heap_sift_down(cand, m, 0);
        }
    }
    qsort(cand, (size_t)m, sizeof *cand, cand_cmp);
    return m;
}

/* All ids with weight >= min_w into cand (unsorted); returns the count and
 * their total weight in *mass. */
static int select_above(const float *work, const double *weight, int n,
                        double min_w, lp_cand *cand, double *mass) {
    int m = 0;
    double sum = 0;
    for (int i = 0; i < n; i++) {
        if (weight[i] < min_w) continue;
        cand[m++] = (lp_cand){work[i], i};
        sum += weight[i];
    }
    *mass = sum;
    return m;
}

/* Candidates for the truncations when top-k is off, sorted. Survivors of
 * min-p have weight >= min_p (the max has weight 1). Survivors of top-p are
 * a most-likely prefix, so when the tokens above a small weight already
 * hold mass >= p, sorting those alone is exact. */
static int select_for_p(const lp_sampler *s, double z_full, lp_cand *cand) {
    double floor_w = s->p.min_p > 0 ? s->p.min_p : 0;
    double mass;
    int m;
    if (s->p.top_p < 1 && floor_w < 1e-5) {
        m = select_above(s->work, s->weight, s->n_vocab, 1e-5, cand, &mass);
        if (mass < (double)s->p.top_p * z_full)
            m = select_above(s->work, s->weight, s->n_vocab, floor_w, cand, &mass);
    } else {
        m = select_above(s->work, s->weight, s->n_vocab, floor_w, cand, &mass);
    }
    qsort(cand, (size_t)m, sizeof *cand, cand_cmp);
    return m;
}

/* Steps 3-5 over s->work / s->weight; the survivors end in s->cand. */
static int truncate_candidates(lp_sampler *s, double z_full) {
    const loupe_sampling *p = &s->p;
    int n = s->n_vocab;
    int top_k_on = p->top_k > 0 && p->top_k < n;
    if (!top_k_on && p->top_p >= 1 && p->min_p <= 0) {
        for (int i = 0; i < n; i++) s->cand[i] = (lp_cand){s->work[i], i};
        return n;
    }
    double z_ref = z_full; /* mass top-p is relative to */
    int m;
    if (top_k_on) {
        m = select_top_k(s->work, n, p->top_k, s->cand);
        z_ref = 0;
        for (int i = 0; i < m; i++) z_ref += s->weight[s->cand[i].id];
    } else {
        m = select_for_p(s, z_full, s->cand);
    }
    if (p->top_p < 1) {
        double cum = 0, target = (double)p->top_p * z_ref;
        for (int i = 0; i < m; i++) {
            cum += s->weight[s->cand[i].id];
            if (cum >= target) {
                m = i + 1;
                break;
            }
        }
    }
    if (p->min_p > 0) {
        int keep = 1; /* the first has weight 1 */
        while (keep < m && s->weight[s->cand[keep].id] >= (double)p->min_p) keep++;
        m = keep;
    }
    return m;
}

/* ------------------------------------------------------------------ draw */

/* Steps 1-2 into s->work and s->weight; returns the log of the softmax
 * denominator relative to the max (log z_full) and the max in *max_out.
 * NaN logits count as -inf, +inf as the largest float. */
static double prepare(lp_sampler *s, const float *logits, float *max_out,
                      double *z_out) {
    int n = s->n_vocab;
    memcpy(s->work, logits, (size_t)n * sizeof *s->work);
    lp_sampler_penalize(s, s->work);
    float t = s->p.temperature > 0 ? s->p.temperature : 1.0f;
    float max = -INFINITY;
    for (int i = 0; i < n; i++) {
        float l = s->work[i] / t;
        if (isnan(l)) l = -INFINITY;
        if (l == INFINITY) l = FLT_MAX;
        s->work[i] = l;
        if (l > max) max = l;
    }
    double z = 0;
    for (int i = 0; i < n; i++) {
        s->weight[i] = max == -INFINITY ? 1.0 : exp((double)s->work[i] - max);
        z += s->weight[i];
    }
    *max_out = max;
    *z_out = z;
    return log(z);
}

static int32_t argmax_lowest(const float *x, int n) {
    int32_t best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

int lp_sampler_dist(lp_sampler *s, const float *logits, int32_t *ids,
                    double *probs) {
    float max;
    double z;
    prepare(s, logits, &max, &z);
    if (s->p.temperature <= 0) {
        ids[0] = argmax_lowest(s->work, s->n_vocab);
        probs[0] = 1;
        return 1;
    }
    int m = truncate_candidates(s, z);
    double mass = 0;
    for (int i = 0; i < m; i++) mass += s->weight[s->cand[i].id];
    for (int i = 0; i < m; i++) {
        ids[i] = s->cand[i].id;
        probs[i] = s->weight[ids[i]] / mass;
    }
    return m;
}

int32_t lp_sampler_sample(lp_sampler *s, const float *logits, float *logprob) {
    float max;
    double z;
    double log_z = prepare(s, logits, &max, &z);
    int32_t id;
    if (s->p.temperature <= 0) {
        id = argmax_lowest(s->work, s->n_vocab);
    } else {
        int m = truncate_candidates(s, z);
        double mass = 0;
        for (int i = 0; i < m; i++) mass += s->weight[s->cand[i].id];
        double u = lp_rng_uniform(&s->rng) * mass, cum = 0;
        id = s->cand[m - 1].id; /* if rounding leaves u above the total */
        for (int i = 0; i < m; i++) {
            cum += s->weight[s->cand[i].id];
            if (u < cum) {
                id = s->cand[i].id;
                break;
            }
        }
    }
    if (logprob) {
        *logprob = max == -INFINITY ? (float)-log((double)s->n_vocab)
                                    : (float)((double)s->work[id] - max - log_z);
    }
    return id;
}

/* ------------------------------------------------------------- logprobs */

int lp_top_logprobs(const float *logits, int n_vocab, int k, int32_t *ids,
                    float *logprobs) {
    if (k > n_vocab) k = n_vocab;
    if (k <= 0) return 0;
    float max = -INFINITY;
    for (int i = 0; i < n_vocab; i++)
        if (logits[i] > max) max = logits[i];
    double z = 0;
    for (int i = 0; i < n_vocab; i++) z += exp((double)logits[i] - max);
    double log_z = (double)max + log(z);
    /* insertion into the sorted output: k is small (a few dozen) */
    int m = 0;
    for (int i = 0; i < n_vocab; i++) {
        float l = logits[i];
        if (m == k && !(l > logprobs[m - 1])) continue; /* ties keep lower id */
        int j = m < k ? m++ : k - 1;
        while (j > 0 && l > logprobs[j - 1]) {
            logprobs[j] = logprobs[j - 1];
            ids[j] = ids[j - 1];
            j--;
        }
        logprobs[j] = l;
        ids[j] = i;
    }
    for (int i = 0; i < m; i++) logprobs[i] = (float)((double)logprobs[i] - log_z);
    return m;
}

/* ---------------------------------------------------------- stop strings */

static size_t utf8_boundary(const char *s, size_t len, size_t off) {
    while (off > 0 && off < len && ((unsigned char)s[off] & 0xC0) == 0x80) off--;
    return off;
}

int lp_stop_scan(const char *held, size_t len, const char *const *stop,
                 int n_stop, size_t *emit) {
    size_t first = len + 1; /* earliest full occurrence */
    size_t hold = len;      /* earliest start of a possible partial one */
    for (int k = 0; k < n_stop; k++) {
        size_t sl = strlen(stop[k]);
        if (sl == 0) continue;
        for (size_t i = 0; i + sl <= len && i < first; i++) {
            if (memcmp(held + i, stop[k], sl) == 0) {
                first = i;
                break;
            }
        }
        size_t from = len >= sl ? len - sl + 1 : 0;
        for (size_t i = from; i < len && i < hold; i++) {
            if (memcmp(held + i, stop[k], len - i) == 0) {
                hold = i;
                break;
            }
        }
    }
    if (first <= len) {
        *emit = utf8_boundary(held, len, first);
        return 1;
    }
    *emit = utf8_boundary(held, len, hold);
    return 0;
}
