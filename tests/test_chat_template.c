/*
 * test_chat_template.c — the Jinja subset against jinja2 itself.
 *
 * Every real chat template in the fixtures (the .jinja files of
 * chat-templates and the chat_template of each hf model's
 * tokenizer_config.json) is rendered for several
 * conversations, with and without the generation prompt, by loupe and by
 * tests/ref/chat_template_ref.py (jinja2 configured as transformers
 * configures it); the texts must be identical, and where jinja2 raises
 * from the template, loupe must fail with LOUPE_ERR_ARG. The same is done
 * for tests/data/chat_template_features.json (one small template per
 * feature). Error cases check status and line number; every prefix of
 * every real template must fail cleanly or render (ASan runs watch it).
 */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "loupe.h"
#include "testutil.h"

/* ------------------------------------------------------------ fixtures */

typedef struct {
    char name[256];
    char *text;
    char bos[64], eos[64];
} tmpl;

static int load_templates(tmpl *out, int cap) {
    int n = 0;
    DIR *d = opendir(tu_shared("models/chat-templates"));
    assert_non_null(d);
    struct dirent *e;
    while ((e = readdir(d)) && n < cap) {
        size_t len = strlen(e->d_name);
        if (len < 7 || strcmp(e->d_name + len - 6, ".jinja") != 0) continue;
        char rel[600];
        snprintf(rel, sizeof rel, "models/chat-templates/%s", e->d_name);
        out[n].text = tu_read_file(tu_shared(rel), NULL);
        assert_non_null(out[n].text);
        snprintf(out[n].name, sizeof out[n].name, "%s", e->d_name);
        strcpy(out[n].bos, "<s>");
        strcpy(out[n].eos, "</s>");
        n++;
    }
    closedir(d);
    d = opendir(tu_shared("models/hf"));
    assert_non_null(d);
    while ((e = readdir(d)) && n < cap) {
        if (e->d_name[0] == '.') continue;
        char rel[600];
        snprintf(rel, sizeof rel, "models/hf/%s/tokenizer_config.json", e->d_name);
        char *txt = tu_read_file(tu_shared(rel), NULL);
        if (!txt) continue;
        cJSON *cfg = cJSON_Parse(txt);
        free(txt);
        assert_non_null(cfg);
        cJSON *ct = cJSON_GetObjectItem(cfg, "chat_template");
        if (cJSON_IsString(ct)) {
            out[n].text = strdup(ct->valuestring);
            snprintf(out[n].name, sizeof out[n].name, "hf/%.200s", e->d_name);
            cJSON *b = cJSON_GetObjectItem(cfg, "bos_token"), *s = cJSON_GetObjectItem(cfg, "eos_token");
            snprintf(out[n].bos, sizeof out[n].bos, "%s", cJSON_IsString(b) ? b->valuestring : "");
            snprintf(out[n].eos, sizeof out[n].eos, "%s", cJSON_IsString(s) ? s->valuestring : "");
            n++;
        }
        cJSON_Delete(cfg);
    }
    closedir(d);
    return n;
}

/* Conversations: system + user, user only, multi-turn, quotes/Unicode/
 * whitespace that trim must handle, an assistant-first one that strict
 * templates reject. */
static const char *const conversations[] = {
    "[{\"role\":\"user\",\"content\":\"Hello!\"}]",
    "[{\"role\":\"system\",\"content\":\"You are a pirate.\"},{\"role\":\"user\",\"content\":\"  Hi there \\n\"}]",
    "[{\"role\":\"user\",\"content\":\"What is 2+2?\"},{\"role\":\"assistant\",\"content\":\"4.\"},"
    "{\"role\":\"user\",\"content\":\"And \\\"3\\\"+3? It's 'x' \\u00e9 \\u65e5\\u672c\"}]",
    "[{\"role\":\"system\",\"content\":\"sys\"},{\"role\":\"user\",\"content\":\"a\"},"
    "{\"role\":\"assistant\",\"content\":\" b \"},{\"role\":\"user\",\"content\":\"c\\n\\nd\"}]",
    "[{\"role\":\"assistant\",\"content\":\"I start\"}]",
};

typedef struct {
    cJSON *cases; /* [{template, vars}] as the reference reads them */
    int n;
} caseset;

static void add_case(caseset *cs, const char *template_text, cJSON *vars) {
    cJSON *c = cJSON_CreateObject();
    cJSON_AddStringToObject(c, "template", template_text);
    cJSON_AddItemToObject(c, "vars", vars);
    cJSON_AddItemToArray(cs->cases, c);
    cs->n++;
}

static void add_real_template_cases(caseset *cs, const tmpl *t) {
    for (size_t k = 0; k < sizeof conversations / sizeof conversations[0]; k++)
        for (int agp = 0; agp < 2; agp++)
            for (int with_date = 0; with_date < 2; with_date++) {
                cJSON *v = cJSON_CreateObject();
                cJSON_AddItemToObject(v, "messages", cJSON_Parse(conversations[k]));
                cJSON_AddBoolToObject(v, "add_generation_prompt", agp);
                if (t->bos[0]) cJSON_AddStringToObject(v, "bos_token", t->bos);
                if (t->eos[0]) cJSON_AddStringToObject(v, "eos_token", t->eos);
                cJSON_AddNullToObject(v, "tools");
                if (with_date) cJSON_AddStringToObject(v, "date_string", "01 Jan 2025");
                add_case(cs, t->text, v);
            }
}

/* Renders every case with jinja2; returns its results array. */
static cJSON *reference_render(const caseset *cs, const char *tag) {
    char in[4096], out[4200];
    snprintf(in, sizeof in, "%s", tu_tmp(tag));
    snprintf(out, sizeof out, "%s.out", in);
    char *txt = cJSON_PrintUnformatted(cs->cases);
    assert_int_equal(tu_write_file(in, txt, strlen(txt)), 0);
    free(txt);
    int rc = tu_system("'%s' '%s' '%s' '%s'", tu_python(), tu_src("tests/ref/chat_template_ref.py"), in, out);
    assert_int_equal(rc, 0);
    txt = tu_read_file(out, NULL);
    assert_non_null(txt);
    cJSON *res = cJSON_Parse(txt);
    free(txt);
    assert_non_null(res);
    assert_int_equal(cJSON_GetArraySize(res), cs->n);
    return res;
}

/* Compares loupe's rendering of every case with the reference's. */
static void compare_all(const caseset *cs, cJSON *ref, int *n_ok, int *n_raise) {
    int i = 0;
    for (cJSON *c = cs->cases->child, *r = ref->child; c && r; c = c->next, r = r->next, i++) {
        const char *t = cJSON_GetObjectItem(c, "template")->valuestring;
        char *vars = cJSON_PrintUnformatted(cJSON_GetObjectItem(c, "vars")), *out = NULL;
        loupe_status st = loupe_template_render(t, vars, &out);
        if (cJSON_IsTrue(cJSON_GetObjectItem(r, "ok"))) {
            const char *want = cJSON_GetObjectItem(r, "text")->valuestring;
            if (st != LOUPE_OK || strcmp(out, want) != 0) {
                print_message("case %d vars %s\n  jinja2: [%s]\n  loupe (%s): [%s]\n", i, vars, want,
                              loupe_status_name(st), st == LOUPE_OK ? out : loupe_last_error());
                fail();
            }
            (*n_ok)++;
        } else {
            const char *kind = cJSON_GetObjectItem(r, "kind")->valuestring;
            if (st == LOUPE_OK || (strcmp(kind, "raise") == 0) != (st == LOUPE_ERR_ARG)) {
                print_message("case %d vars %s\n  jinja2 failed (%s): %s\n  loupe: %s %s\n", i, vars, kind,
                              cJSON_GetObjectItem(r, "error")->valuestring, loupe_status_name(st),
                              st == LOUPE_OK ? out : loupe_last_error());
                fail();
            }
            *n_raise += strcmp(kind, "raise") == 0;
        }
        free(out);
        free(vars);
    }
}

/* --------------------------------------------------------------- tests */

static void test_real_templates_match_jinja2(void **state) {
    (void)state;
    tmpl ts[32];
    int nt = load_templates(ts, 32);
    assert_true(nt >= 8); /* 5 .jinja files + Llama 3.2, Qwen2.5, TinyLlama configs */
    caseset cs = {cJSON_CreateArray(), 0};
    for (int i = 0; i < nt; i++) add_real_template_cases(&cs, &ts[i]);
    cJSON *ref = reference_render(&cs, "chat_real.json");
    int n_ok = 0, n_raise = 0;
    compare_all(&cs, ref, &n_ok, &n_raise);
    print_message("%d templates, %d cases: %d rendered identically, %d rejected by both\n", nt, cs.n,
                  n_ok, n_raise);
    assert_true(n_ok >= cs.n * 3 / 4); /* most conversations are valid for most templates */
    assert_true(n_raise > 0);          /* Gemma refuses a system role */
    cJSON_Delete(ref);
    cJSON_Delete(cs.cases);
    for (int i = 0; i < nt; i++) free(ts[i].text);
}

static void test_features_match_jinja2(void **state) {
    (void)state;
    char *txt = tu_read_file(tu_src("tests/data/chat_template_features.json"), NULL);
    assert_non_null(txt);
    caseset cs = {cJSON_Parse(txt), 0};
    free(txt);
    assert_non_null(cs.cases);
    cs.n = cJSON_GetArraySize(cs.cases);
    assert_true(cs.n >= 30);
    cJSON *ref = reference_render(&cs, "chat_features.json");
    int n_ok = 0, n_raise = 0;
    compare_all(&cs, ref, &n_ok, &n_raise);
    assert_true(n_ok >= cs.n - 4);
    cJSON_Delete(ref);
    cJSON_Delete(cs.cases);
}

static void expect_error(const char *t, const char *vars, loupe_status want, const char *needle) {
    char *out = NULL;
    loupe_status st = loupe_template_render(t, vars, &out);
    if (st != want || !strstr(loupe_last_error(), needle)) {
        print_message("template [%s]: got %s '%s', want %s containing '%s'\n", t, loupe_status_name(st),
                      loupe_last_error(), loupe_status_name(want), needle);
        fail();
    }
    assert_null(out);
}

/* head + n x unit + tail, in a static buffer (templates nesting n deep). */
static char *deep_buf;

static const char *deep(const char *head, const char *unit, const char *tail, int n) {
    char *buf;
    size_t hu = strlen(head), uu = strlen(unit), tu = strlen(tail);
    free(deep_buf);
    deep_buf = buf = malloc(hu + (size_t)n * uu + tu + 1);
    assert_non_null(buf);
    memcpy(buf, head, hu);
    for (int i = 0; i < n; i++) memcpy(buf + hu + (size_t)i * uu, unit, uu);
    memcpy(buf + hu + (size_t)n * uu, tail, tu + 1);
    return buf;
}

static void test_errors_name_line(void **state) {
    (void)state;
    expect_error("a\n{% include 'x.jinja' %}", NULL, LOUPE_ERR_UNSUPPORTED, "line 2: tag 'include'");
    expect_error("a\nb\n{{ x | frobnicate }}", NULL, LOUPE_ERR_UNSUPPORTED, "line 3: filter 'frobnicate'");
    expect_error("{% if x %}\nno end", NULL, LOUPE_ERR_FORMAT, "line 1: 'if' is never closed");
    expect_error("x\n{{ 'a' + 1 }}", NULL, LOUPE_ERR_FORMAT, "line 2: unsupported operand");
    expect_error("{{ 'abc }}", NULL, LOUPE_ERR_FORMAT, "line 1: unterminated string");
    expect_error("{% for x in y %}{% endif %}", NULL, LOUPE_ERR_FORMAT, "where {% endfor %} should close the 'for' of line 1");
    expect_error("{% break %}", NULL, LOUPE_ERR_FORMAT, "outside a for loop");
    expect_error("{{ messages[0].role }}", "{\"messages\": []}", LOUPE_ERR_FORMAT, "undefined");
    expect_error("\n\n{{ raise_exception('Conversation roles must alternate') }}", NULL, LOUPE_ERR_ARG,
                 "line 3: Conversation roles must alternate");
    expect_error("{{ range(100000000) | length }}", NULL, LOUPE_ERR_NOMEM, "range()");
    expect_error("{% for i in range(1000000) %}{% for j in range(1000000) %}{{ i }}{% endfor %}{% endfor %}",
                 NULL, LOUPE_ERR_NOMEM, "template");
    expect_error("{% set ns = namespace() %}{% set ns.me = ns %}{{ ns }}", NULL, LOUPE_ERR_UNSUPPORTED,
                 "nested more than");
    expect_error("{% set ns = namespace(x=[]) %}{% for i in range(100000) %}{% set ns.x = [ns.x] %}"
                 "{% endfor %}{{ ns.x }}", NULL, LOUPE_ERR_UNSUPPORTED, "nested more than");
    expect_error(deep("{{ 1", " + 1", " }}", 100000), NULL, LOUPE_ERR_UNSUPPORTED, "nests more than");
    expect_error(deep("{{ ", "not ", "1 }}", 100000), NULL, LOUPE_ERR_UNSUPPORTED, "nested too deeply");
    expect_error(deep("", "{% if 1 %}", "", 100000), NULL, LOUPE_ERR_UNSUPPORTED, "nested too deeply");
    expect_error(deep("{{ x", "|trim", " }}", 100000), NULL, LOUPE_ERR_UNSUPPORTED, "nests more than");
    free(deep_buf);
    deep_buf = NULL;
    expect_error("{{ x }}", "{\"x\": ", LOUPE_ERR_FORMAT, "invalid JSON");
    expect_error("{{ x }}", "[1]", LOUPE_ERR_ARG, "JSON object");
    char *out = NULL;
    assert_int_equal(loupe_template_render(NULL, NULL, &out), LOUPE_ERR_ARG);
    assert_int_equal(loupe_template_render("x", NULL, NULL), LOUPE_ERR_ARG);
    assert_int_equal(loupe_chat_render(NULL, NULL, 0, 1, &out), LOUPE_ERR_ARG);
}

/* Every prefix of every real template: a clean status, never a crash. */
static void test_prefixes_never_crash(void **state) {
    (void)state;
    tmpl ts[32];
    int nt = load_templates(ts, 32), n_ok = 0, n_err = 0;
    const char *vars = "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], "
                       "\"add_generation_prompt\": true, \"bos_token\": \"<s>\"}";
    for (int i = 0; i < nt; i++) {
        size_t len = strlen(ts[i].text);
        char *buf = malloc(len + 1);
        for (size_t k = 0; k <= len; k++) {
            memcpy(buf, ts[i].text, k);
            buf[k] = 0;
            char *out = NULL;
            loupe_status st = loupe_template_render(buf, vars, &out);
            if (st == LOUPE_OK) {
                assert_non_null(out);
                n_ok++;
            } else {
                assert_null(out);
                assert_true(strncmp(loupe_last_error(), "chat template line ", 19) == 0);
                n_err++;
            }
            free(out);
        }
        free(buf);
        free(ts[i].text);
    }
    print_message("%d prefixes rendered, %d rejected\n", n_ok, n_err);
    assert_true(n_ok > 0 && n_err > 0);
}

/* stories260K has no template: loupe_chat_render uses the documented
 * fallback, which must equal jinja2's rendering of the same text. */
static void test_fallback_for_model_without_template(void **state) {
    (void)state;
    loupe_model *m = NULL;
    loupe_status st = loupe_model_open(tu_shared("models/stories260K/stories260K.gguf"), NULL, &m);
    if (st != LOUPE_OK) print_message("open: %s\n", loupe_last_error());
    assert_int_equal(st, LOUPE_OK);
    assert_null(loupe_chat_template(m));
    loupe_chat_message msgs[] = {{"system", "Tell stories."}, {"user", "Once upon a time"},
                                 {"assistant", "there was a cat."}, {"user", " More! "}};
    char *out = NULL;
    assert_int_equal(loupe_chat_render(m, msgs, 4, 1, &out), LOUPE_OK);

    loupe_model_info info;
    loupe_model_get_info(m, &info);
    caseset cs = {cJSON_CreateArray(), 0};
    cJSON *v = cJSON_CreateObject(), *arr = cJSON_AddArrayToObject(v, "messages");
    for (int i = 0; i < 4; i++) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "role", msgs[i].role);
        cJSON_AddStringToObject(o, "content", msgs[i].content);
        cJSON_AddItemToArray(arr, o);
    }
    cJSON_AddBoolToObject(v, "add_generation_prompt", 1);
    if (info.bos_id >= 0) cJSON_AddStringToObject(v, "bos_token", loupe_token_str(m, info.bos_id));
    add_case(&cs, loupe_chat_fallback_template(), v);
    cJSON *ref = reference_render(&cs, "chat_fallback.json");
    cJSON *r = ref->child;
    assert_true(cJSON_IsTrue(cJSON_GetObjectItem(r, "ok")));
    assert_string_equal(out, cJSON_GetObjectItem(r, "text")->valuestring);
    assert_non_null(strstr(out, "User: More!\nAssistant:"));
    free(out);
    cJSON_Delete(ref);
    cJSON_Delete(cs.cases);
    loupe_model_close(m);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_real_templates_match_jinja2),
        cmocka_unit_test(test_features_match_jinja2),
        cmocka_unit_test(test_errors_name_line),
        cmocka_unit_test(test_prefixes_never_crash),
        cmocka_unit_test(test_fallback_for_model_without_template),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
