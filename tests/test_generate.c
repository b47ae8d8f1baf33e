/*
 * test_generate.c — loupe_generate's contract on stories260K: stop strings
 * (held back, spanning tokens, removed), EOS (forced through a logits
 * hook), the end of the context, a prompt too long for it, cancellation,
 * the reported log-probabilities and seeded determinism. The expected text
 * comes from llama2.c's greedy output (greedy-from-bos.txt).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "loupe.h"
#include "testutil.h"

/* ------------------------------------------------------------- fixture */

typedef struct {
    loupe_model *m;
    loupe_model_info info;
    char *gold; /* greedy text from BOS, llama2.c's trailing newline removed */
    size_t gold_len;
} fixture;

static int setup(void **state) {
    fixture *f = calloc(1, sizeof *f);
    if (!f) return -1;
    loupe_model_params mp = {.n_threads = 1};
    if (loupe_model_open(tu_shared("models/stories260K/stories260K.gguf"), &mp, &f->m)) {
        print_error("open: %s\n", loupe_last_error());
        free(f);
        return -1;
    }
    loupe_model_get_info(f->m, &f->info);
    f->gold = tu_read_file(tu_shared("models/stories260K/greedy-from-bos.txt"), &f->gold_len);
    if (!f->gold) {
        loupe_model_close(f->m);
        free(f);
        return -1;
    }
    if (f->gold_len && f->gold[f->gold_len - 1] == '\n') f->gold_len--;
    *state = f;
    return 0;
}

static int teardown(void **state) {
    fixture *f = *state;
    loupe_model_close(f->m);
    free(f->gold);
    free(f);
    return 0;
}

/* ------------------------------------------------------------ collector */

typedef struct {
    char text[8192];
    size_t len;
    int n_calls;
    int32_t ids[1024];
    float logprobs[1024];
    int cancel_at;          /* return 1 on this call (1-based); 0 = never */
    const char *forbidden;  /* text that must never reach the callback */
} collector;

static int collect(void *user, int32_t id, const char *text, size_t len, float lp) {
    collector *c = user;
    assert_true(c->len + len < sizeof c->text);
    memcpy(c->text + c->len, text, len);
    c->len += len;
    c->text[c->len] = 0;
    if (c->n_calls < 1024) {
        c->ids[c->n_calls] = id;
        c->logprobs[c->n_calls] = lp;
    }
    c->n_calls++;
    if (c->forbidden) assert_null(strstr(c->text, c->forbidden));
    return c->cancel_at && c->n_calls == c->cancel_at;
}

static loupe_session *session(const fixture *f, int n_ctx) {
    loupe_session *s = NULL;
    loupe_session_params sp = {.n_ctx = n_ctx, .n_threads = 1};
    assert_int_equal(loupe_session_new(f->m, &sp, &s), LOUPE_OK);
    return s;
}

static loupe_generate_params greedy_params(collector *c, int max_new) {
    loupe_generate_params p;
    loupe_generate_default(&p);
    p.sampling.temperature = 0;
    p.max_new_tokens = max_new;
    p.on_token = collect;
    p.user = c;
    return p;
}

/* Expected output: the golden text up to the first occurrence of stop. */
static size_t gold_until(const fixture *f, const char *stop) {
    const char *at = strstr(f->gold, stop);
    assert_non_null(at);
    return (size_t)(at - f->gold);
}

/* ---------------------------------------------------------------- tests */

static void test_stop_strings(void **state) {
    fixture *f = *state;
    const char *cases[][2] = {
        {"Lily", NULL},        /* a word several tokens in */
        {"time, there", NULL}, /* spans at least three tokens */
        {"xyzzy", "Lily"},     /* an unused stop first, then a used one */
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        const char *stops[2] = {cases[k][0], cases[k][1]};
        int n_stop = stops[1] ? 2 : 1;
        const char *hit = stops[1] ? stops[1] : stops[0];
        size_t want = gold_until(f, hit);
        collector c = {0};
        c.forbidden = hit;
        loupe_generate_params p = greedy_params(&c, 150);
        p.stop = stops;
        p.n_stop = n_stop;
        loupe_session *s = session(f, 0);
        int32_t bos = f->info.bos_id;
        loupe_generate_result r;
        assert_int_equal(loupe_generate(s, &bos, 1, &p, &r), LOUPE_OK);
        assert_int_equal(r.finish, LOUPE_FINISH_STOP);
        assert_int_equal(c.len, want);
        assert_memory_equal(c.text, f->gold, want);
        assert_int_equal(r.n_generated, c.n_calls);
        assert_true(r.n_generated < 150);
        loupe_session_free(s);
    }
}

static void test_partial_stop_is_released_at_the_end(void **state) {
    fixture *f = *state;
    /* a stop string that starts with the last bytes of the output holds
     * them back until max tokens, then they must come out */
    loupe_session *s = session(f, 0);
    int32_t bos = f->info.bos_id;
    loupe_generate_result r;
    collector plain = {0};
    loupe_generate_params q = greedy_params(&plain, 12);
    assert_int_equal(loupe_generate(s, &bos, 1, &q, &r), LOUPE_OK);
    assert_true(plain.len > 4);
    char stop[8];
    snprintf(stop, sizeof stop, "%s!", plain.text + plain.len - 4);

    collector c = {0};
    loupe_generate_params p = greedy_params(&c, 12);
    const char *stops[1] = {stop};
    p.stop = stops;
    p.n_stop = 1;
    loupe_session_reset(s);
    assert_int_equal(loupe_generate(s, &bos, 1, &p, &r), LOUPE_OK);
    assert_int_equal(r.finish, LOUPE_FINISH_LENGTH);
    assert_int_equal(c.len, plain.len);
    assert_memory_equal(c.text, plain.text, c.len);
    assert_memory_equal(c.text, f->gold, c.len);
    loupe_session_free(s);
}

static void test_context_end_and_too_long_prompt(void **state) {
    fixture *f = *state;
    collector c = {0};
    loupe_generate_params p = greedy_params(&c, 0);
    loupe_session *s = session(f, 12);
    int32_t bos = f->info.bos_id;
    loupe_generate_result r;
    assert_int_equal(loupe_generate(s, &bos, 1, &p, &r), LOUPE_OK);
    assert_int_equal(r.finish, LOUPE_FINISH_LENGTH);
    assert_int_equal(r.n_generated, 12); /* 11 evaluated + 1 sampled last */
    assert_int_equal(loupe_session_pos(s), 12);
    assert_memory_equal(c.text, f->gold, c.len);

    int32_t prompt[20];
    for (int i = 0; i < 20; i++) prompt[i] = i ? 300 + i : bos;
    loupe_session_reset(s);
    assert_int_equal(loupe_generate(s, prompt, 20, &p, &r), LOUPE_ERR_CONTEXT);
    const char *msg = loupe_last_error();
    assert_non_null(strstr(msg, "20"));
    assert_non_null(strstr(msg, "12"));
    assert_non_null(strstr(msg, "context"));
    assert_int_equal(loupe_generate(s, prompt, 0, &p, &r), LOUPE_ERR_ARG);
    loupe_session_free(s);
}

/* Logits hook: after `at` forward calls, makes EOS the argmax. */
typedef struct {
    int calls, at, eos;
    float last[512]; /* (n_vocab) logits of the last call, before edits */
} eos_forcer;

static int force_eos(void *user, const loupe_activation *a) {
    eos_forcer *e = user;
    const float *row = a->data + (size_t)(a->T - 1) * (size_t)a->width;
    memcpy(e->last, row, sizeof e->last);
    if (++e->calls == e->at) a->data[(size_t)(a->T - 1) * (size_t)a->width + e->eos] = 1e4f;
    return 0;
}

static void test_eos_and_logprobs(void **state) {
    fixture *f = *state;
    assert_true(f->info.n_vocab <= 512);
    loupe_session *s = session(f, 0);
    eos_forcer e = {.at = 6, .eos = f->info.eos_id};
    assert_int_equal(loupe_session_add_hook(s, "logits", force_eos, &e), LOUPE_OK);
    collector c = {0};
    loupe_generate_params p = greedy_params(&c, 100);
    int32_t bos = f->info.bos_id;
    loupe_generate_result r;
    assert_int_equal(loupe_generate(s, &bos, 1, &p, &r), LOUPE_OK);
    /* prefill + 5 decode calls; the 6th sampled token is EOS */
    assert_int_equal(r.finish, LOUPE_FINISH_STOP);
    assert_int_equal(r.n_generated, 6);
    assert_int_equal(c.n_calls, 6);
    assert_int_equal(c.ids[5], f->info.eos_id);
    assert_memory_equal(c.text, f->gold, c.len); /* no "</s>" text */
    assert_null(strstr(c.text, "</s>"));
    /* the EOS logprob under the edited logits is ~0 */
    assert_true(c.logprobs[5] > -1e-3f && c.logprobs[5] <= 0);

    /* ignore_eos: EOS is an ordinary token, generation goes on */
    loupe_session_reset(s);
    e.calls = 0;
    collector c2 = {0};
    p = greedy_params(&c2, 10);
    p.ignore_eos = 1;
    assert_int_equal(loupe_generate(s, &bos, 1, &p, &r), LOUPE_OK);
    assert_int_equal(r.finish, LOUPE_FINISH_LENGTH);
    assert_int_equal(r.n_generated, 10);
    assert_int_equal(c2.ids[5], f->info.eos_id);

    /* greedy logprob = log-softmax of the argmax of the raw logits */
    loupe_session_reset(s);
    e.calls = 0;
    e.at = -1;
    collector c3 = {0};
    p = greedy_params(&c3, 1);
    assert_int_equal(loupe_generate(s, &bos, 1, &p, &r), LOUPE_OK);
    double max = -1e30, z = 0;
    for (int i = 0; i < f->info.n_vocab; i++) max = fmax(max, e.last[i]);
    for (int i = 0; i < f->info.n_vocab; i++) z += exp(e.last[i] - max);
    assert_float_equal(e.last[c3.ids[0]], max, 0);
    assert_float_equal(c3.logprobs[0], -log(z), 1e-5);
    loupe_session_free(s);
}

static void test_cancel_and_seeds(void **state) {
    fixture *f = *state;
    loupe_session *s = session(f, 0);
    int32_t bos = f->info.bos_id;
    collector c = {.cancel_at = 3};
    loupe_generate_params p = greedy_params(&c, 50);
    loupe_generate_result r;
    assert_int_equal(loupe_generate(s, &bos, 1, &p, &r), LOUPE_OK);
    assert_int_equal(r.finish, LOUPE_FINISH_CANCELLED);
    assert_int_equal(r.n_generated, 3);
    assert_true(r.prefill_ms >= 0 && r.decode_ms >= 0);

    collector a = {0}, b = {0}, d = {0};
    collector *runs[3] = {&a, &b, &d};
    for (int i = 0; i < 3; i++) {
        loupe_generate_params q = greedy_params(runs[i], 40);
        q.sampling.temperature = 1.0f;
        q.sampling.seed = i == 2 ? 2 : 1;
        loupe_session_reset(s);
        assert_int_equal(loupe_generate(s, &bos, 1, &q, &r), LOUPE_OK);
    }
    assert_int_equal(a.n_calls, b.n_calls);
    assert_memory_equal(a.ids, b.ids, (size_t)a.n_calls * sizeof a.ids[0]);
    assert_true(a.n_calls != d.n_calls ||
                memcmp(a.ids, d.ids, (size_t)a.n_calls * sizeof a.ids[0]) != 0);
    loupe_session_free(s);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_stop_strings),
        cmocka_unit_test(test_partial_stop_is_released_at_the_end),
        cmocka_unit_test(test_context_end_and_too_long_prompt),
        cmocka_unit_test(test_eos_and_logprobs),
        cmocka_unit_test(test_cancel_and_seeds),
    };
    return cmocka_run_group_tests_name("generate", tests, setup, teardown);
}
