/*
 * test_session.c — sessions, the KV cache and hooks, through the public API.
 *
 * The independent expectation in each case is the plain f32, single-thread,
 * batched evaluation of the same model, itself checked against the numpy
 * reference in test_reference.c:
 *  - evaluating in pieces (prefill then token by token) gives the same
 *    logits as one batch; 1 and 2 threads give bit-identical logits;
 *  - an fp16 KV cache stays within fp16 rounding of the f32 cache;
 *  - a read-only hook changes nothing; hooks see the documented shapes;
 *    attention rows are causal and sum to 1; a hook can abort (CANCELLED);
 *  - the int8 path too (stories260K quantized to Q8_0 by tests/ref/gguf_np.py,
 *    packed at load): 1, 2 and 3 threads give bit-identical logits (its
 *    decoding is checked against a reference in test_loader.c);
 *  - resid_post of the last layer through loupe_unembed gives the logits;
 *  - a prompt longer than the context and bad token ids are clear errors.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "loupe.h"
#include "testutil.h"

#define N_TOK 24

static loupe_model *model;
static loupe_model_info info;
static int32_t toks[N_TOK];

static int setup(void **state) {
    (void)state;
    if (loupe_model_open(tu_shared("models/stories260K/stories260K.gguf"), NULL, &model) != LOUPE_OK) {
        fprintf(stderr, "open: %s\n", loupe_last_error());
        return -1;
    }
    loupe_model_get_info(model, &info);
    toks[0] = info.bos_id;
    for (int i = 1; i < N_TOK; i++) toks[i] = (i * 37 + 11) % info.n_vocab;
    return 0;
}

static int teardown(void **state) {
    (void)state;
    loupe_model_close(model);
    return 0;
}

static loupe_session *new_session(int n_ctx, int threads, int kv_f16) {
    loupe_session_params sp = {.n_ctx = n_ctx, .n_threads = threads, .kv_f16 = kv_f16};
    loupe_session *s = NULL;
    assert_int_equal(loupe_session_new(model, &sp, &s), LOUPE_OK);
    return s;
}

/* (n, V) logits of the first n of ids evaluated as one batch on `threads`
 * threads. */
static float *batch_logits_of(const int32_t *ids, int n, int threads, int kv_f16) {
    loupe_session *s = new_session(0, threads, kv_f16);
    float *lg = malloc(sizeof(float) * (size_t)n * info.n_vocab);
    assert_non_null(lg);
    assert_int_equal(loupe_eval(s, ids, n, lg, 1), LOUPE_OK);
    assert_int_equal(loupe_session_pos(s), n);
    loupe_session_free(s);
    return lg;
}

/* (N_TOK, V) logits of one batched evaluation of toks. */
static float *batch_logits(int threads, int kv_f16) {
    return batch_logits_of(toks, N_TOK, threads, kv_f16);
}

static double max_abs_diff(const float *a, const float *b, size_t n) {
    double m = 0;
    for (size_t i = 0; i < n; i++) m = fmax(m, fabs((double)a[i] - b[i]));
    return m;
}

/* ----------------------------------------------------------- eval paths */

static void test_threads_bit_identical(void **state) {
    (void)state;
    float *one = batch_logits(1, 0), *two = batch_logits(2, 0);
    assert_memory_equal(one, two, sizeof(float) * N_TOK * info.n_vocab);
    free(one);
    free(two);
}

/* The int8 model: matmuls split over threads in whole groups of 16 rows,
 * or in whole tiles of 16 tokens. */
static void test_int8_threads_bit_identical(void **state) {
    (void)state;
    const char *q8 = tu_tmp("session-stories-q8_0.gguf");
    assert_int_equal(tu_system("'%s' '%s' q8 '%s' '%s'", tu_python(), tu_src("tests/ref/gguf_np.py"),
                               tu_shared("models/stories260K/stories260K.gguf"), q8), 0);
    loupe_model *f32 = model;
    float *ref = batch_logits(1, 0);
    assert_int_equal(loupe_model_open(q8, NULL, &model), LOUPE_OK);
    float *one = batch_logits(1, 0), *two = batch_logits(2, 0), *three = batch_logits(3, 0);
    size_t n = (size_t)N_TOK * info.n_vocab;
    assert_memory_equal(one, two, sizeof(float) * n);
    assert_memory_equal(one, three, sizeof(float) * n);
    double d = max_abs_diff(one, ref, n);
    assert_true(d > 0 && d < 1.0); /* int8 indeed, and close to f32 */
    /* a batch long enough for its small matmuls to split tokens between
     * threads (forward.c, lp_token_split; 100 = six 16-token tiles and 4) */
    int32_t ids[100];
    for (int i = 0; i < 100; i++) ids[i] = (i * 53 + 7) % info.n_vocab;
    for (int threads = 2; threads <= 3; threads++) {
        float *a = batch_logits_of(ids, 100, 1, 0), *b = batch_logits_of(ids, 100, threads, 0);
        assert_memory_equal(a, b, sizeof(float) * 100 * info.n_vocab);
        free(a);
        free(b);
    }
    loupe_model_close(model);
    model = f32;
    free(ref);
    free(one);
    free(two);
    free(three);
}

static void test_incremental_matches_batch(void **state) {
    (void)state;
    float *ref = batch_logits(1, 0);
    loupe_session *s = new_session(0, 1, 0);
    float *lg = malloc(sizeof(float) * info.n_vocab);
    assert_int_equal(loupe_eval(s, toks, 10, lg, 0), LOUPE_OK);
    assert_true(max_abs_diff(lg, ref + 9 * info.n_vocab, info.n_vocab) < 1e-4);
    for (int i = 10; i < N_TOK; i++) {
        assert_int_equal(loupe_eval(s, toks + i, 1, lg, 0), LOUPE_OK);
        assert_true(max_abs_diff(lg, ref + (size_t)i * info.n_vocab, info.n_vocab) < 1e-4);
    }
    free(lg);
    free(ref);
    loupe_session_free(s);
}

static void test_kv_f16_close(void **state) {
    (void)state;
    float *ref = batch_logits(1, 0), *half = batch_logits(1, 1);
    double d = max_abs_diff(ref, half, (size_t)N_TOK * info.n_vocab);
    /* fp16 keeps 11 significant bits: relative 2^-11 on K and V moves
     * logits of this O(10) model by well under 0.05 */
    assert_true(d > 0);    /* the cache really is fp16 */
    assert_true(d < 0.05);
    free(ref);
    free(half);
}

static void test_reset_reuses_cache(void **state) {
    (void)state;
    float *ref = batch_logits(1, 0);
    loupe_session *s = new_session(0, 1, 0);
    float *lg = malloc(sizeof(float) * N_TOK * info.n_vocab);
    int32_t other[5] = {1, 2, 3, 4, 5};
    assert_int_equal(loupe_eval(s, other, 5, NULL, 0), LOUPE_OK);
    loupe_session_reset(s);
    assert_int_equal(loupe_session_pos(s), 0);
    assert_int_equal(loupe_eval(s, toks, N_TOK, lg, 1), LOUPE_OK);
    assert_memory_equal(lg, ref, sizeof(float) * N_TOK * info.n_vocab);
    free(lg);
    free(ref);
    loupe_session_free(s);
}

/* ----------------------------------------------------------- errors */

static void test_context_overflow(void **state) {
    (void)state;
    loupe_session *s = new_session(16, 1, 0);
    assert_int_equal(loupe_eval(s, toks, N_TOK, NULL, 0), LOUPE_ERR_CONTEXT);
    assert_non_null(strstr(loupe_last_error(), "context"));
    assert_int_equal(loupe_session_pos(s), 0);
    assert_int_equal(loupe_eval(s, toks, 16, NULL, 0), LOUPE_OK);
    assert_int_equal(loupe_eval(s, toks, 1, NULL, 0), LOUPE_ERR_CONTEXT);
    loupe_session_free(s);
}

static void test_bad_token(void **state) {
    (void)state;
    loupe_session *s = new_session(0, 1, 0);
    int32_t bad[2] = {1, info.n_vocab};
    assert_int_equal(loupe_eval(s, bad, 2, NULL, 0), LOUPE_ERR_ARG);
    assert_non_null(strstr(loupe_last_error(), "outside the vocabulary"));
    bad[1] = -3;
    assert_int_equal(loupe_eval(s, bad, 2, NULL, 0), LOUPE_ERR_ARG);
    assert_int_equal(loupe_session_pos(s), 0);
    loupe_session_free(s);
}

/* ----------------------------------------------------------- hooks */

typedef struct {
    int calls[LOUPE_HOOK_COUNT];
    int bad_shape;
    double worst_row_sum_err;
    int acausal;
    float *last_resid; /* (N_TOK, dim) resid_post of the last layer */
} hook_log;

static int log_hook(void *user, const loupe_activation *a) {
    hook_log *h = user;
    h->calls[a->point]++;
    int dim = info.dim;
    switch (a->point) {
    case LOUPE_HOOK_ATTN_PATTERN:
        if (a->n_heads != info.n_heads || a->width != a->pos0 + a->T) h->bad_shape = 1;
        for (int hd = 0; hd < a->n_heads; hd++)
            for (int t = 0; t < a->T; t++) {
                const float *row = a->data + ((size_t)hd * a->T + t) * a->width;
                double sum = 0;
                for (int k = 0; k < a->width; k++) {
                    if (k > a->pos0 + t && row[k] != 0) h->acausal = 1;
                    sum += row[k];
                }
                h->worst_row_sum_err = fmax(h->worst_row_sum_err, fabs(sum - 1));
            }
        break;
    case LOUPE_HOOK_ATTN_Z:
        if (a->width != info.n_heads * info.head_dim) h->bad_shape = 1;
        break;
    case LOUPE_HOOK_LOGITS:
        if (a->width != info.n_vocab) h->bad_shape = 1;
        break;
    case LOUPE_HOOK_RESID_POST:
        if (a->width != dim) h->bad_shape = 1;
        if (a->layer == info.n_layers - 1 && a->pos0 + a->T <= N_TOK)
            memcpy(h->last_resid + (size_t)a->pos0 * dim, a->data, sizeof(float) * a->T * dim);
        break;
    default:
        if (a->width != dim) h->bad_shape = 1;
    }
    return 0;
}

static void test_hooks_observe(void **state) {
    (void)state;
    float *ref = batch_logits(1, 0);
    loupe_session *s = new_session(0, 1, 0);
    hook_log h = {0};
    h.last_resid = calloc((size_t)N_TOK * info.dim, sizeof(float));
    const char *names[] = {"embed", "resid_pre.*", "attn.pattern.*", "attn.z.*",
                           "attn_out.*", "resid_mid.*", "mlp_out.*", "resid_post.*",
                           "final_norm", "logits"};
    for (int i = 0; i < 10; i++)
        assert_int_equal(loupe_session_add_hook(s, names[i], log_hook, &h), LOUPE_OK);
    float *lg = malloc(sizeof(float) * N_TOK * info.n_vocab);
    assert_int_equal(loupe_eval(s, toks, N_TOK, lg, 1), LOUPE_OK);
    /* observing changes nothing */
    assert_memory_equal(lg, ref, sizeof(float) * N_TOK * info.n_vocab);
    assert_int_equal(h.calls[LOUPE_HOOK_EMBED], 1);
    assert_int_equal(h.calls[LOUPE_HOOK_ATTN_PATTERN], info.n_layers);
    assert_int_equal(h.calls[LOUPE_HOOK_RESID_POST], info.n_layers);
    assert_int_equal(h.calls[LOUPE_HOOK_LOGITS], 1);
    assert_false(h.bad_shape);
    assert_false(h.acausal);
    assert_true(h.worst_row_sum_err < 1e-5);
    /* logit lens at the last layer equals the final logits */
    float *lens = malloc(sizeof(float) * N_TOK * info.n_vocab);
    assert_int_equal(loupe_unembed(s, h.last_resid, N_TOK, lens), LOUPE_OK);
    assert_true(max_abs_diff(lens, ref, (size_t)N_TOK * info.n_vocab) < 1e-5);
    /* decode steps fire with T = 1 and a growing key count */
    memset(h.calls, 0, sizeof h.calls);
    assert_int_equal(loupe_eval(s, toks, 1, lg, 0), LOUPE_OK);
    assert_int_equal(h.calls[LOUPE_HOOK_ATTN_PATTERN], info.n_layers);
    free(lens);
    free(lg);
    free(ref);
    free(h.last_resid);
    loupe_session_free(s);
}

static int zero_hook(void *user, const loupe_activation *a) {
    (void)user;
    memset(a->data, 0, sizeof(float) * (size_t)a->T * a->width * a->n_heads);
    return 0;
}

static int abort_hook(void *user, const loupe_activation *a) {
    (void)a;
    return ++*(int *)user >= 2;
}

static void test_hooks_modify_and_abort(void **state) {
    (void)state;
    float *ref = batch_logits(1, 0);
    loupe_session *s = new_session(0, 1, 0);
    float *lg = malloc(sizeof(float) * N_TOK * info.n_vocab);
    /* zeroing the MLP output of layer 2 must change the logits */
    assert_int_equal(loupe_session_add_hook(s, "mlp_out.2", zero_hook, NULL), LOUPE_OK);
    assert_int_equal(loupe_eval(s, toks, N_TOK, lg, 1), LOUPE_OK);
    assert_true(max_abs_diff(lg, ref, (size_t)N_TOK * info.n_vocab) > 1e-3);
    /* cleared hooks: back to the reference */
    loupe_session_clear_hooks(s);
    loupe_session_reset(s);
    assert_int_equal(loupe_eval(s, toks, N_TOK, lg, 1), LOUPE_OK);
    assert_memory_equal(lg, ref, sizeof(float) * N_TOK * info.n_vocab);
    /* a hook that aborts on its second call: CANCELLED, position unchanged */
    loupe_session_reset(s);
    int count = 0;
    assert_int_equal(loupe_session_add_hook(s, "resid_pre.*", abort_hook, &count), LOUPE_OK);
    assert_int_equal(loupe_eval(s, toks, N_TOK, lg, 1), LOUPE_ERR_CANCELLED);
    assert_int_equal(loupe_session_pos(s), 0);
    free(lg);
    free(ref);
    loupe_session_free(s);
}

static int abort_after(void *user) { return --*(int *)user < 0; }

static void test_abort_check(void **state) {
    (void)state;
    float *ref = batch_logits(1, 0);
    loupe_session *s = new_session(0, 1, 0);
    float *lg = malloc(sizeof(float) * N_TOK * info.n_vocab);
    /* allows 2 layers, then stops: CANCELLED and nothing advanced */
    int budget = 2;
    loupe_session_set_abort(s, abort_after, &budget);
    loupe_session_clear_hooks(s); /* the abort check survives this */
    assert_int_equal(loupe_eval(s, toks, N_TOK, lg, 1), LOUPE_ERR_CANCELLED);
    assert_int_equal(loupe_session_pos(s), 0);
    assert_true(budget < 0);
    /* removed: the same evaluation completes and matches */
    loupe_session_set_abort(s, NULL, NULL);
    assert_int_equal(loupe_eval(s, toks, N_TOK, lg, 1), LOUPE_OK);
    assert_memory_equal(lg, ref, sizeof(float) * N_TOK * info.n_vocab);
    free(lg);
    free(ref);
    loupe_session_free(s);
}

static void test_hook_names(void **state) {
    (void)state;
    loupe_hook_point p;
    int layer;
    assert_int_equal(loupe_hook_parse("attn.pattern.3", &p, &layer), LOUPE_OK);
    assert_int_equal(p, LOUPE_HOOK_ATTN_PATTERN);
    assert_int_equal(layer, 3);
    assert_int_equal(loupe_hook_parse("resid_post.*", &p, &layer), LOUPE_OK);
    assert_int_equal(layer, -1);
    assert_int_equal(loupe_hook_parse("logits", &p, &layer), LOUPE_OK);
    assert_int_equal(p, LOUPE_HOOK_LOGITS);
    const char *bad[] = {"logits.1", "attn.pattern", "attn.pattern.x", "resid", "", "mlp_out.-1"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_int_equal(loupe_hook_parse(bad[i], &p, &layer), LOUPE_ERR_ARG);
        assert_non_null(strstr(loupe_last_error(), "unknown hook"));
    }
    loupe_session *s = new_session(0, 1, 0);
    assert_int_equal(loupe_session_add_hook(s, "resid_post.99", zero_hook, NULL), LOUPE_ERR_ARG);
    assert_non_null(strstr(loupe_last_error(), "out of range"));
    loupe_session_free(s);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_threads_bit_identical),
        cmocka_unit_test(test_int8_threads_bit_identical),
        cmocka_unit_test(test_incremental_matches_batch),
        cmocka_unit_test(test_kv_f16_close),
        cmocka_unit_test(test_reset_reuses_cache),
        cmocka_unit_test(test_context_overflow),
        cmocka_unit_test(test_bad_token),
        cmocka_unit_test(test_hooks_observe),
        cmocka_unit_test(test_hooks_modify_and_abort),
        cmocka_unit_test(test_abort_check),
        cmocka_unit_test(test_hook_names),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
