/*
 * test_sampler.c — the sampler against hand-computed cases, the published
 * PCG32 vectors, a chi-square bound on empirical frequencies and an
 * independent numpy reference (tests/ref/sampler_ref.py).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "src/sampler.h"
#include "testutil.h"

/* ------------------------------------------------------------- helpers */

static loupe_sampling plain(float temperature) {
    loupe_sampling p;
    memset(&p, 0, sizeof p);
    p.temperature = temperature;
    p.top_k = 0;
    p.top_p = 1;
    p.min_p = 0;
    p.repeat_penalty = 1;
    p.penalty_last_n = 64;
    p.seed = 1234;
    return p;
}

static lp_sampler *make(const loupe_sampling *p, int n_vocab) {
    lp_sampler *s = NULL;
    assert_int_equal(lp_sampler_new(p, n_vocab, &s), LOUPE_OK);
    assert_non_null(s);
    return s;
}

/* Logits whose softmax at T=1 is exactly probs (up to float rounding). */
static void logits_of(const double *probs, int n, float *out) {
    for (int i = 0; i < n; i++) out[i] = (float)log(probs[i]);
}

/* Final distribution as a dense (n) vector of probabilities. */
static void dense_dist(lp_sampler *s, const float *logits, int n, double *dense) {
    int32_t *ids = malloc((size_t)n * sizeof *ids);
    double *pr = malloc((size_t)n * sizeof *pr);
    assert_non_null(ids);
    assert_non_null(pr);
    int m = lp_sampler_dist(s, logits, ids, pr);
    for (int i = 0; i < n; i++) dense[i] = 0;
    for (int i = 0; i < m; i++) dense[ids[i]] = pr[i];
    free(ids);
    free(pr);
}

static void assert_close(double a, double b, double tol) {
    if (fabs(a - b) > tol) fail_msg("%.9g != %.9g (tol %g)", a, b, tol);
}

/* ----------------------------------------------------------------- RNG */

static void test_pcg32_reference_vector(void **st) {
    (void)st;
    /* pcg32_srandom_r(42, 54): the pcg-c-basic demo's first outputs */
    static const uint32_t want[6] = {0xa15c02b7u, 0x7b47f409u, 0xba1d3330u,
                                     0x83d2f293u, 0xbfa4784bu, 0xcbed606eu};
    lp_rng r;
    lp_rng_seed_stream(&r, 42, 54);
    for (int i = 0; i < 6; i++) assert_int_equal(lp_rng_u32(&r), want[i]);
}

static void test_rng_uniform_range_and_seeds(void **st) {
    (void)st;
    lp_rng a, b, c;
    lp_rng_seed(&a, 7);
    lp_rng_seed(&b, 7);
    lp_rng_seed(&c, 8);
    int differ = 0;
    double sum = 0;
    for (int i = 0; i < 10000; i++) {
        double x = lp_rng_uniform(&a), y = lp_rng_uniform(&b), z = lp_rng_uniform(&c);
        assert_true(x >= 0 && x < 1);
        assert_true(x == y);
        differ += x != z;
        sum += x;
    }
    assert_true(differ > 9990);
    assert_close(sum / 10000, 0.5, 0.01); /* sd of the mean is 0.0029 */
}

/* -------------------------------------------------------------- greedy */

static void test_greedy_argmax_lowest_id_on_ties(void **st) {
    (void)st;
    float logits[5] = {1, 3, 3, 2, -1};
    loupe_sampling p = plain(0);
    lp_sampler *s = make(&p, 5);
    float lp;
    assert_int_equal(lp_sampler_sample(s, logits, &lp), 1);
    double z = exp(1) + 2 * exp(3) + exp(2) + exp(-1);
    assert_close(lp, 3 - log(z), 1e-6);
    lp_sampler_free(s);
}

/* --------------------------------------------------------- truncations */

static const double P4[4] = {0.5, 0.3, 0.15, 0.05};

static void check_set(float top_p, int top_k, float min_p, const double *want) {
    float logits[4];
    logits_of(P4, 4, logits);
    loupe_sampling p = plain(1);
    p.top_p = top_p;
    p.top_k = top_k;
    p.min_p = min_p;
    lp_sampler *s = make(&p, 4);
    double d[4];
    dense_dist(s, logits, 4, d);
    for (int i = 0; i < 4; i++) assert_close(d[i], want[i], 1e-6);
    lp_sampler_free(s);
}

static void test_top_p_keeps_smallest_prefix(void **st) {
    (void)st;
    const double only0[4] = {1, 0, 0, 0};
    const double two[4] = {0.5 / 0.8, 0.3 / 0.8, 0, 0};
    const double three[4] = {0.5 / 0.95, 0.3 / 0.95, 0.15 / 0.95, 0};
    check_set(0.4f, 0, 0, only0);   /* 0.5 >= 0.4 */
    check_set(0.5f - 1e-4f, 0, 0, only0);
    check_set(0.75f, 0, 0, two);    /* 0.5 < 0.75 <= 0.8 */
    check_set(0.85f, 0, 0, three);  /* 0.8 < 0.85 <= 0.95 */
    check_set(0.96f, 0, 0, P4);
    check_set(1.0f, 0, 0, P4);
    check_set(1e-6f, 0, 0, only0);  /* at least one */
}

static void test_top_k_and_min_p(void **st) {
    (void)st;
    const double one[4] = {1, 0, 0, 0};
    const double two[4] = {0.5 / 0.8, 0.3 / 0.8, 0, 0};
    const double three[4] = {0.5 / 0.95, 0.3 / 0.95, 0.15 / 0.95, 0};
    check_set(1, 1, 0, one);
    check_set(1, 2, 0, two);
    check_set(1, 3, 0, three);
    check_set(1, 4, 0, P4);
    check_set(1, 100, 0, P4);
    check_set(1, 0, 0.25f, three); /* keep p >= 0.125 */
    check_set(1, 0, 0.5f, two);    /* keep p >= 0.25  */
    check_set(1, 0, 0.7f, one);    /* keep p >= 0.35  */
    check_set(1, 0, 0.05f, P4);    /* 0.05 >= 0.025 */
    /* top-k then top-p over the renormalised top-k: 0.625 >= 0.6 */
    check_set(0.6f, 2, 0, one);
    check_set(0.7f, 2, 0, two);
}

static void test_temperature_powers_probabilities(void **st) {
    (void)st;
    float logits[4];
    logits_of(P4, 4, logits);
    for (int k = 0; k < 2; k++) {
        float t = k == 0 ? 2.0f : 0.5f;
        loupe_sampling p = plain(t);
        lp_sampler *s = make(&p, 4);
        double d[4], want[4], z = 0;
        for (int i = 0; i < 4; i++) z += want[i] = pow(P4[i], 1.0 / t);
        dense_dist(s, logits, 4, d);
        for (int i = 0; i < 4; i++) assert_close(d[i], want[i] / z, 1e-6);
        /* logprob of a drawn token under the tempered full distribution */
        float lp;
        int32_t id = lp_sampler_sample(s, logits, &lp);
        assert_close(lp, log(want[id] / z), 1e-5);
        lp_sampler_free(s);
    }
}

static void test_top_p_large_vocab_matches_full_sort(void **st) {
    (void)st;
    /* 5000 tokens with a long flat tail: exercises the pre-filter path,
     * checked against an explicit sort of the probabilities */
    enum { N = 5000 };
    static float logits[N];
    static double d[N], w[N];
    lp_rng r;
    lp_rng_seed(&r, 99);
    for (int i = 0; i < N; i++) logits[i] = (float)(lp_rng_uniform(&r) * 8 - 4);
    const float tops[3] = {0.3f, 0.9f, 0.999f};
    for (int t = 0; t < 3; t++) {
        loupe_sampling p = plain(1);
        p.top_p = tops[t];
        lp_sampler *s = make(&p, N);
        dense_dist(s, logits, N, d);
        double z = 0, maxl = -1e30;
        for (int i = 0; i < N; i++) maxl = fmax(maxl, logits[i]);
        for (int i = 0; i < N; i++) z += w[i] = exp(logits[i] - maxl);
        /* threshold: the kept set is all tokens with prob >= the smallest kept */
        double kept_mass = 0, min_kept = 1;
        int n_kept = 0;
        for (int i = 0; i < N; i++)
            if (d[i] > 0) {
                kept_mass += w[i] / z;
                min_kept = fmin(min_kept, w[i] / z);
                n_kept++;
            }
        for (int i = 0; i < N; i++)
            if (d[i] == 0) assert_true(w[i] / z <= min_kept);
        assert_true(kept_mass >= tops[t] - 1e-9);
        assert_true(kept_mass - min_kept < tops[t]); /* smallest such set */
        assert_true(n_kept >= 1);
        lp_sampler_free(s);
    }
}

/* ----------------------------------------------------------- penalties */

static void test_repetition_penalty_exact(void **st) {
    (void)st;
    loupe_sampling p = plain(1);
    p.repeat_penalty = 2;
    lp_sampler *s = make(&p, 5);
    const int32_t hist[4] = {0, 1, 1, 3};
    for (int i = 0; i < 4; i++) assert_int_equal(lp_sampler_accept(s, hist[i]), LOUPE_OK);
    float l[5] = {2, -1, 0.5f, 0, 3};
    lp_sampler_penalize(s, l);
    /* 0: 2/2; 1: -1*2 once although seen twice; 3: 0*2; others untouched */
    const float want[5] = {1, -2, 0.5f, 0, 3};
    for (int i = 0; i < 5; i++) assert_close(l[i], want[i], 0);
    lp_sampler_free(s);
}

static void test_presence_frequency_exact(void **st) {
    (void)st;
    loupe_sampling p = plain(1);
    p.presence_penalty = 0.5f;
    p.frequency_penalty = 0.25f;
    lp_sampler *s = make(&p, 4);
    const int32_t hist[5] = {2, 2, 2, 0, 2};
    for (int i = 0; i < 5; i++) assert_int_equal(lp_sampler_accept(s, hist[i]), LOUPE_OK);
    float l[4] = {1, 1, 1, 1};
    lp_sampler_penalize(s, l);
    const float want[4] = {1 - 0.5f - 0.25f, 1, 1 - 0.5f - 4 * 0.25f, 1};
    for (int i = 0; i < 4; i++) assert_close(l[i], want[i], 1e-7);
    lp_sampler_free(s);
}

static void test_penalty_window(void **st) {
    (void)st;
    loupe_sampling p = plain(1);
    p.repeat_penalty = 4;
    p.penalty_last_n = 2;
    lp_sampler *s = make(&p, 6);
    const int32_t hist[5] = {5, 0, 4, 1, 2};
    for (int i = 0; i < 5; i++) assert_int_equal(lp_sampler_accept(s, hist[i]), LOUPE_OK);
    float l[6] = {8, 8, 8, 8, 8, 8};
    lp_sampler_penalize(s, l);
    const float want[6] = {8, 2, 2, 8, 8, 8}; /* only the last two: 1, 2 */
    for (int i = 0; i < 6; i++) assert_close(l[i], want[i], 0);
    lp_sampler_free(s);

    /* -1: the whole history, past the initial capacity */
    p.penalty_last_n = -1;
    s = make(&p, 600);
    for (int i = 0; i < 600; i++) assert_int_equal(lp_sampler_accept(s, i), LOUPE_OK);
    float big[600];
    for (int i = 0; i < 600; i++) big[i] = 8;
    lp_sampler_penalize(s, big);
    for (int i = 0; i < 600; i++) assert_close(big[i], 2, 0);
    lp_sampler_free(s);

    /* 0: no penalty at all */
    p.penalty_last_n = 0;
    s = make(&p, 6);
    assert_int_equal(lp_sampler_accept(s, 3), LOUPE_OK);
    float z[6] = {8, 8, 8, 8, 8, 8};
    lp_sampler_penalize(s, z);
    for (int i = 0; i < 6; i++) assert_close(z[i], 8, 0);
    assert_int_equal(lp_sampler_accept(s, 6), LOUPE_ERR_ARG);
    lp_sampler_free(s);
}

/* ------------------------------------------------------------ sampling */

/* 20000 draws; chi-square against expected must stay under the 0.1%
 * critical value for df = k - 1 (3: 16.27, 2: 13.82). */
static void chi_square_case(const loupe_sampling *p, const float *logits,
                            const double *expect, int n, double critical) {
    enum { DRAWS = 20000 };
    lp_sampler *s = make(p, n);
    int count[8] = {0};
    for (int i = 0; i < DRAWS; i++) {
        int32_t id = lp_sampler_sample(s, logits, NULL);
        assert_true(id >= 0 && id < n);
        count[id]++;
    }
    double chi = 0;
    for (int i = 0; i < n; i++) {
        if (expect[i] == 0) {
            assert_int_equal(count[i], 0);
            continue;
        }
        double e = expect[i] * DRAWS;
        chi += (count[i] - e) * (count[i] - e) / e;
    }
    if (chi >= critical) fail_msg("chi-square %.3f >= %.3f", chi, critical);
    lp_sampler_free(s);
}

static void test_empirical_frequencies(void **st) {
    (void)st;
    const double probs[4] = {0.1, 0.2, 0.3, 0.4};
    float logits[4];
    logits_of(probs, 4, logits);
    loupe_sampling p = plain(1);
    chi_square_case(&p, logits, probs, 4, 16.27);

    /* top-k 3 at T = 0.5: p^2 over {1,2,3} */
    p = plain(0.5f);
    p.top_k = 3;
    p.seed = 77;
    const double t2[4] = {0, 0.04 / 0.29, 0.09 / 0.29, 0.16 / 0.29};
    chi_square_case(&p, logits, t2, 4, 13.82);
}

static void test_same_seed_same_sequence(void **st) {
    (void)st;
    enum { N = 50, STEPS = 200 };
    float logits[N];
    lp_rng r;
    lp_rng_seed(&r, 5);
    for (int i = 0; i < N; i++) logits[i] = (float)(lp_rng_uniform(&r) * 3);
    loupe_sampling p = plain(0.9f);
    p.top_k = 40;
    p.top_p = 0.95f;
    p.repeat_penalty = 1.1f;
    int32_t a[STEPS], b[STEPS], c[STEPS];
    for (int run = 0; run < 3; run++) {
        p.seed = run == 2 ? 43 : 42;
        lp_sampler *s = make(&p, N);
        int32_t *out = run == 0 ? a : run == 1 ? b : c;
        for (int i = 0; i < STEPS; i++) {
            out[i] = lp_sampler_sample(s, logits, NULL);
            assert_int_equal(lp_sampler_accept(s, out[i]), LOUPE_OK);
        }
        lp_sampler_free(s);
    }
    assert_memory_equal(a, b, sizeof a);
    assert_memory_not_equal(a, c, sizeof a);
}

static void test_top_logprobs(void **st) {
    (void)st;
    float logits[6] = {0.5f, 2, -1, 2, 1, 0};
    double z = 0;
    for (int i = 0; i < 6; i++) z += exp(logits[i]);
    int32_t ids[4];
    float lps[4];
    assert_int_equal(lp_top_logprobs(logits, 6, 4, ids, lps), 4);
    const int32_t want[4] = {1, 3, 4, 0}; /* tie 2 == 2: lower id first */
    for (int i = 0; i < 4; i++) {
        assert_int_equal(ids[i], want[i]);
        assert_close(lps[i], logits[want[i]] - log(z), 1e-6);
    }
    assert_int_equal(lp_top_logprobs(logits, 6, 0, ids, lps), 0);
}

static void test_top_logprobs_k_above_vocab(void **st) {
    (void)st;
    float logits[3] = {0, 1, 2};
    int32_t ids[5];
    float lps[5];
    assert_int_equal(lp_top_logprobs(logits, 3, 5, ids, lps), 3);
    assert_int_equal(ids[0], 2);
    assert_int_equal(ids[2], 0);
    double s = 0;
    for (int i = 0; i < 3; i++) s += exp(lps[i]);
    assert_close(s, 1, 1e-6);
}

static void test_rejects_bad_parameters(void **st) {
    (void)st;
    loupe_sampling p = plain(-0.1f);
    assert_int_equal(lp_sampling_check(&p), LOUPE_ERR_ARG);
    p = plain(1);
    p.top_p = 0;
    assert_int_equal(lp_sampling_check(&p), LOUPE_ERR_ARG);
    p.top_p = 1.01f;
    assert_int_equal(lp_sampling_check(&p), LOUPE_ERR_ARG);
    p = plain(1);
    p.min_p = -0.5f;
    assert_int_equal(lp_sampling_check(&p), LOUPE_ERR_ARG);
    p = plain(1);
    p.top_k = -3;
    assert_int_equal(lp_sampling_check(&p), LOUPE_ERR_ARG);
    p = plain(1);
    p.repeat_penalty = 0;
    assert_int_equal(lp_sampling_check(&p), LOUPE_ERR_ARG);
    p = plain(1);
    p.penalty_last_n = -2;
    assert_int_equal(lp_sampling_check(&p), LOUPE_ERR_ARG);
    p = plain(1);
    p.temperature = NAN;
    assert_int_equal(lp_sampling_check(&p), LOUPE_ERR_ARG);
    assert_non_null(strstr(loupe_last_error(), "temperature"));
    p = plain(0.7f);
    assert_int_equal(lp_sampling_check(&p), LOUPE_OK);
    loupe_sampling d;
    loupe_sampling_default(&d);
    assert_int_equal(lp_sampling_check(&d), LOUPE_OK);
}

/* ------------------------------------------------- numpy reference */

static void test_matches_numpy_reference(void **st) {
    (void)st;
    enum { CASES = 60, MAXN = 64 };
    const char *in = tu_tmp("sampler_ref_in.txt"), *out = tu_tmp("sampler_ref_out.txt");
    static loupe_sampling ps[CASES];
    static float logits[CASES][MAXN];
    static int32_t hist[CASES][20];
    static int n_of[CASES], nh_of[CASES];
    FILE *f = fopen(in, "w");
    assert_non_null(f);
    lp_rng r;
    lp_rng_seed(&r, 2024);
    for (int c = 0; c < CASES; c++) {
        int n = 8 + (int)(lp_rng_u32(&r) % (MAXN - 8));
        loupe_sampling p = plain(c % 10 == 0 ? 0 : (float)(0.2 + 1.6 * lp_rng_uniform(&r)));
        if (c % 3 == 1) p.top_k = 1 + (int)(lp_rng_u32(&r) % (unsigned)n);
        if (c % 4 == 2) p.top_p = (float)(0.05 + 0.9 * lp_rng_uniform(&r));
        if (c % 5 == 3) p.min_p = (float)(0.3 * lp_rng_uniform(&r));
        if (c % 2 == 0) p.repeat_penalty = (float)(0.8 + 0.8 * lp_rng_uniform(&r));
        if (c % 7 == 5) p.presence_penalty = (float)(lp_rng_uniform(&r) - 0.3);
        if (c % 6 == 4) p.frequency_penalty = (float)(lp_rng_uniform(&r) * 0.5);
        p.penalty_last_n = (int)(lp_rng_u32(&r) % 22) - 1;
        ps[c] = p;
        n_of[c] = n;
        nh_of[c] = (int)(lp_rng_u32(&r) % 20);
        fprintf(f, "%d %.9g %d %.9g %.9g %.9g %.9g %.9g %d\n", n, p.temperature,
                p.top_k, p.top_p, p.min_p, p.repeat_penalty, p.presence_penalty,
                p.frequency_penalty, p.penalty_last_n);
        for (int i = 0; i < nh_of[c]; i++) {
            hist[c][i] = (int32_t)(lp_rng_u32(&r) % (unsigned)n);
            fprintf(f, "%s%d", i ? " " : "", hist[c][i]);
        }
        fprintf(f, "\n");
        for (int i = 0; i < n; i++) {
            logits[c][i] = (float)(lp_rng_uniform(&r) * 10 - 5);
            fprintf(f, "%s%.9g", i ? " " : "", logits[c][i]);
        }
        fprintf(f, "\n");
    }
    fclose(f);
    assert_int_equal(tu_system("%s %s %s %s", tu_python(),
                               tu_src("tests/ref/sampler_ref.py"), in, out), 0);
    f = fopen(out, "r");
    assert_non_null(f);
    for (int c = 0; c < CASES; c++) {
        lp_sampler *s = make(&ps[c], n_of[c]);
        for (int i = 0; i < nh_of[c]; i++)
            assert_int_equal(lp_sampler_accept(s, hist[c][i]), LOUPE_OK);
        double d[MAXN];
        dense_dist(s, logits[c], n_of[c], d);
        for (int i = 0; i < n_of[c]; i++) {
            double want;
            assert_int_equal(fscanf(f, "%lf", &want), 1);
            if (fabs(d[i] - want) > 1e-5)
                fail_msg("case %d token %d: %.9g, numpy %.9g", c, i, d[i], want);
        }
        lp_sampler_free(s);
    }
    fclose(f);
}

/* -------------------------------------------------------- stop strings */

static void scan(const char *held, const char *const *stop, int n_stop,
                 int want_found, size_t want_emit) {
    size_t emit = 999;
    assert_int_equal(lp_stop_scan(held, strlen(held), stop, n_stop, &emit),
                     want_found);
    assert_int_equal(emit, want_emit);
}

static void test_stop_scan(void **st) {
    (void)st;
    const char *s1[] = {"STOP"};
    scan("hello", s1, 1, 0, 5);          /* nothing held */
    scan("hello S", s1, 1, 0, 6);        /* "S" may start STOP */
    scan("hello ST", s1, 1, 0, 6);
    scan("hello STO", s1, 1, 0, 6);
    scan("hello STOP there", s1, 1, 1, 6);
    scan("hello STX", s1, 1, 0, 9);      /* not a prefix any more */
    scan("SSTO", s1, 1, 0, 1);           /* earliest possible start wins */
    const char *s2[] = {"cd", "b"};
    scan("abcd", s2, 2, 1, 1);           /* earliest occurrence of any */
    scan("ac", s2, 2, 0, 1);
    const char *s3[] = {"\n\n", "###"};
    scan("line\n", s3, 2, 0, 4);
    scan("line\n\nmore", s3, 2, 1, 4);
    scan("x##", s3, 2, 0, 1);
    /* UTF-8: never cut inside a character */
    const char *s4[] = {"\xa9z"};        /* a stop starting mid-character */
    scan("ab\xc3\xa9", s4, 1, 0, 2);
    scan("", s1, 1, 0, 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pcg32_reference_vector),
        cmocka_unit_test(test_rng_uniform_range_and_seeds),
        cmocka_unit_test(test_greedy_argmax_lowest_id_on_ties),
        cmocka_unit_test(test_top_p_keeps_smallest_prefix),
        cmocka_unit_test(test_top_k_and_min_p),
        cmocka_unit_test(test_temperature_powers_probabilities),
        cmocka_unit_test(test_top_p_large_vocab_matches_full_sort),
        cmocka_unit_test(test_repetition_penalty_exact),
        cmocka_unit_test(test_presence_frequency_exact),
        cmocka_unit_test(test_penalty_window),
        cmocka_unit_test(test_empirical_frequencies),
        cmocka_unit_test(test_same_seed_same_sequence),
        cmocka_unit_test(test_top_logprobs),
        cmocka_unit_test(test_top_logprobs_k_above_vocab),
        cmocka_unit_test(test_rejects_bad_parameters),
        cmocka_unit_test(test_matches_numpy_reference),
        cmocka_unit_test(test_stop_scan),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
