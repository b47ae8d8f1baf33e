/*
 * test_e2e.c — golden end-to-end tests through the public C API.
 *
 *  stories260K.gguf: greedy decoding from BOS for 200 tokens reproduces
 *    llama2.c's own output (greedy-from-bos.txt) byte for byte.
 *  slm-gpt2-char (HF dir): for every case of greedy.json, the prompt
 *    tokenizes to prompt_ids and greedy decoding reproduces greedy_ids and
 *    greedy_text exactly (80 tokens).
 *  Both again under every kernel table this CPU can run (fp32 weights), so
 *    a SIMD table that changes a greedy choice is caught and named.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "loupe.h"
#include "testutil.h"

#define STORIES_STEPS 200

static const char *const ISAS[] = {"scalar", "avx2", "avx512", "neon"};
#define N_ISAS (sizeof ISAS / sizeof ISAS[0])

/* ------------------------------------------------------- token collector */

typedef struct {
    char *text;     /* (len) concatenated callback text */
    size_t len, cap;
    int32_t *ids;   /* (n_ids) generated ids */
    int n_ids, cap_ids;
} collector;

static int on_token(void *user, int32_t id, const char *text, size_t len, float logprob) {
    collector *c = user;
    (void)logprob;
    if (c->len + len + 1 > c->cap) {
        size_t cap = 2 * (c->len + len + 1);
        char *p = realloc(c->text, cap);
        if (!p) return 1;
        c->text = p;
        c->cap = cap;
    }
    memcpy(c->text + c->len, text, len);
    c->len += len;
    c->text[c->len] = 0;
    if (c->n_ids == c->cap_ids) {
        int cap = c->cap_ids ? 2 * c->cap_ids : 128;
        int32_t *p = realloc(c->ids, (size_t)cap * sizeof *p);
        if (!p) return 1;
        c->ids = p;
        c->cap_ids = cap;
    }
    c->ids[c->n_ids++] = id;
    return 0;
}

static void collector_free(collector *c) {
    free(c->text);
    free(c->ids);
    memset(c, 0, sizeof *c);
}

/* Greedy generation of n tokens after prompt in a fresh session. */
static loupe_status greedy(const loupe_model *m, const int32_t *prompt, int n_prompt,
                           int n, collector *out, loupe_generate_result *res) {
    loupe_session *s = NULL;
    loupe_session_params sp = {.n_ctx = 0, .n_threads = 0};
    loupe_status st = loupe_session_new(m, &sp, &s);
    if (st != LOUPE_OK) return st;
    loupe_generate_params gp;
    loupe_generate_default(&gp);
    gp.max_new_tokens = n;
    gp.sampling.temperature = 0;
    gp.on_token = on_token;
    gp.user = out;
    st = loupe_generate(s, prompt, n_prompt, &gp, res);
    loupe_session_free(s);
    return st;
}

/* ------------------------------------------------------- golden checks */

/* Each check returns 0 when the golden holds, or writes why not into why. */

static int check_stories(char *why, size_t cap) {
    size_t gold_len = 0;
    char *gold = tu_read_file(tu_shared("models/stories260K/greedy-from-bos.txt"), &gold_len);
    if (!gold) return snprintf(why, cap, "cannot read greedy-from-bos.txt"), 1;
    /* llama2.c prints a newline after the last token; it is not model output. */
    if (gold_len && gold[gold_len - 1] == '\n') gold_len--;

    loupe_model *m = NULL;
    loupe_model_params mp = {.n_threads = 0};
    collector c = {0};
    loupe_generate_result res = {0};
    int bad = 1;
    loupe_status st = loupe_model_open(tu_shared("models/stories260K/stories260K.gguf"), &mp, &m);
    if (st != LOUPE_OK) {
        snprintf(why, cap, "open stories260K.gguf: %s", loupe_last_error());
        goto done;
    }
    loupe_model_info info;
    loupe_model_get_info(m, &info);
    int32_t bos = info.bos_id;
    if (bos < 0) {
        snprintf(why, cap, "stories260K.gguf has no BOS id");
        goto done;
    }
    st = greedy(m, &bos, 1, STORIES_STEPS, &c, &res);
    if (st != LOUPE_OK) {
        snprintf(why, cap, "generate: %s: %s", loupe_status_name(st), loupe_last_error());
        goto done;
    }
    size_t same = 0;
    while (same < gold_len && same < c.len && c.text[same] == gold[same]) same++;
    if (same < gold_len) {
        snprintf(why, cap, "stories260K: text differs from the golden at byte %zu of %zu "
                 "(%d tokens generated): got \"%.40s\", want \"%.40s\"",
                 same, gold_len, c.n_ids, c.text ? c.text + same : "", gold + same);
        goto done;
    }
    if (res.n_generated != STORIES_STEPS) {
        snprintf(why, cap, "stories260K: %d tokens generated, want %d", res.n_generated,
                 STORIES_STEPS);
        goto done;
    }
    bad = 0;
done:
    collector_free(&c);
    loupe_model_close(m);
    free(gold);
    return bad;
}

/* ids: a cJSON array of numbers -> (n) int32, or NULL. */
static int32_t *json_ids(const cJSON *arr, int *n) {
    *n = cJSON_GetArraySize(arr);
    int32_t *ids = malloc((size_t)(*n > 0 ? *n : 1) * sizeof *ids);
    if (!ids) return NULL;
    for (int i = 0; i < *n; i++) ids[i] = (int32_t)cJSON_GetArrayItem(arr, i)->valuedouble;
    return ids;
}

static int check_slm_case(const loupe_model *m, const cJSON *cs, char *why, size_t cap) {
    const char *prompt = cJSON_GetObjectItem(cs, "prompt")->valuestring;
    const char *want_text = cJSON_GetObjectItem(cs, "greedy_text")->valuestring;
    int n_prompt = 0, n_greedy = 0, bad = 1;
    int32_t *prompt_ids = json_ids(cJSON_GetObjectItem(cs, "prompt_ids"), &n_prompt);
    int32_t *want = json_ids(cJSON_GetObjectItem(cs, "greedy_ids"), &n_greedy);
    int32_t toks[512];
    size_t n_tok = 0;
    collector c = {0};
    loupe_generate_result res = {0};
    if (!prompt_ids || !want) {
        snprintf(why, cap, "out of memory");
        goto done;
    }
    loupe_status st = loupe_tokenize(m, prompt, strlen(prompt), 0, 0, toks, 512, &n_tok);
    if (st != LOUPE_OK || (int)n_tok != n_prompt ||
        memcmp(toks, prompt_ids, n_tok * sizeof *toks) != 0) {
        snprintf(why, cap, "slm %s: tokenize gives %zu ids (status %s), want prompt_ids (%d)",
                 prompt, n_tok, loupe_status_name(st), n_prompt);
        goto done;
    }
    st = greedy(m, prompt_ids, n_prompt, n_greedy, &c, &res);
    if (st != LOUPE_OK) {
        snprintf(why, cap, "slm generate: %s: %s", loupe_status_name(st), loupe_last_error());
        goto done;
    }
    int k = 0;
    while (k < n_greedy && k < c.n_ids && c.ids[k] == want[k]) k++;
    if (k < n_greedy || c.n_ids != n_greedy) {
        snprintf(why, cap, "slm %s: greedy ids differ at step %d (got %d of %d ids)",
                 prompt, k, c.n_ids, n_greedy);
        goto done;
    }
    if (c.len != strlen(want_text) || (c.len && memcmp(c.text, want_text, c.len) != 0)) {
        snprintf(why, cap, "slm %s: text \"%s\", want \"%s\"", prompt, c.text ? c.text : "",
                 want_text);
        goto done;
    }
    bad = 0;
done:
    collector_free(&c);
    free(prompt_ids);
    free(want);
    return bad;
}

static int check_slm(char *why, size_t cap) {
    char *json = tu_read_file(tu_shared("models/slm-gpt2-char/greedy.json"), NULL);
    if (!json) return snprintf(why, cap, "cannot read greedy.json"), 1;
    cJSON *root = cJSON_Parse(json);
    free(json);
    const cJSON *cases = root ? cJSON_GetObjectItem(root, "cases") : NULL;
    if (!cJSON_IsArray(cases) || cJSON_GetArraySize(cases) == 0) {
        cJSON_Delete(root);
        return snprintf(why, cap, "greedy.json: no cases"), 1;
    }
    loupe_model *m = NULL;
    loupe_model_params mp = {.n_threads = 0};
    loupe_status st = loupe_model_open(tu_shared("models/slm-gpt2-char"), &mp, &m);
    if (st != LOUPE_OK) {
        snprintf(why, cap, "open slm-gpt2-char: %s", loupe_last_error());
        cJSON_Delete(root);
        return 1;
    }
    int bad = 0;
    const cJSON *cs;
    cJSON_ArrayForEach(cs, cases) {
        if ((bad = check_slm_case(m, cs, why, cap)) != 0) break;
    }
    loupe_model_close(m);
    cJSON_Delete(root);
    return bad;
}

/* ---------------------------------------------------------------- tests */

/* Appends "[isa] why\n" to report (cap bytes), truncating quietly. */
static void report_add(char *report, size_t cap, const char *isa, const char *why) {
    size_t len = strlen(report);
    if (len + 1 < cap) snprintf(report + len, cap - len, "[%s] %s\n", isa, why);
}

static void test_stories260k_greedy_from_bos(void **state) {
    (void)state;
    char why[1024] = "";
    if (check_stories(why, sizeof why)) fail_msg("%s", why);
}

static void test_slm_gpt2_char_greedy(void **state) {
    (void)state;
    char why[1024] = "";
    if (check_slm(why, sizeof why)) fail_msg("%s", why);
}

static void test_goldens_every_isa(void **state) {
    (void)state;
    char saved[32];
    snprintf(saved, sizeof saved, "%s", loupe_isa());
    int n_run = 0, n_bad = 0;
    char report[4096] = "";
    for (size_t i = 0; i < N_ISAS; i++) {
        loupe_status st = loupe_set_isa(ISAS[i]);
        if (st == LOUPE_ERR_ISA) {
            print_message("isa %-7s not available on this CPU: skipped\n", ISAS[i]);
            continue;
        }
        assert_int_equal(st, LOUPE_OK);
        n_run++;
        char why[1024];
        int bad_s = check_stories(why, sizeof why);
        if (bad_s) report_add(report, sizeof report, ISAS[i], why);
        int bad_g = check_slm(why, sizeof why);
        if (bad_g) report_add(report, sizeof report, ISAS[i], why);
        print_message("isa %-7s stories260K %s, slm-gpt2-char %s\n", ISAS[i],
                      bad_s ? "DIVERGES" : "matches", bad_g ? "DIVERGES" : "matches");
        n_bad += bad_s + bad_g;
    }
    assert_int_equal(loupe_set_isa(saved), LOUPE_OK);
    assert_true(n_run >= 1);
    if (n_bad) fail_msg("goldens diverge under some kernel tables:\n%s", report);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_stories260k_greedy_from_bos),
        cmocka_unit_test(test_slm_gpt2_char_greedy),
        cmocka_unit_test(test_goldens_every_isa),
    };
    return cmocka_run_group_tests_name("e2e", tests, NULL, NULL);
}
