/*
 * interp.c — the /v1/loupe/ endpoints: attention patterns, the logit lens
 * and token attribution of a prompt, answered with the very JSON documents
 * `loupe attention|lens|attribute -o FILE.json` writes
 * (docs/INTERPRETABILITY.md). A request is validated here in the
 * connection thread, then runs in a slot like a generation request.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server.h"

/* What one request may make the server hold or compute. */
#define SRV_MAX_PATTERN (1L << 24) /* attention weights captured: layers x heads x T x T */
#define SRV_MAX_LOGITS (1L << 26)  /* logits of one pass: tokens x n_vocab */
#define SRV_MAX_SAMPLES 10000      /* Shapley orders */
#define SRV_MAX_K 100              /* lens tokens per cell (the CLI's -k range) */
#define SRV_MAX_SEED (1LL << 53)   /* integers a JSON number holds exactly */

static const char *const attention_keys[] = {"prompt", "layers", "heads", NULL};
static const char *const lens_keys[] = {"prompt", "k", NULL};
static const char *const attribute_keys[] = {"prompt", "target", "method", "samples", "seed", NULL};

void srv_interp_free(srv_interp *x) {
    free(x->layers);
    free(x->heads);
    srv_prompt_free(&x->target);
    memset(x, 0, sizeof *x);
}

/* ----------------------------------------------------------------- fields */

static int invalid(srv_error *err, const char *param, const char *what) {
    return srv_error_set(err, 400, "invalid_request_error", "invalid_value", param, "'%s' must be %s",
                         param, what);
}

static int out_of_memory(srv_error *err) {
    return srv_error_set(err, 500, "server_error", NULL, NULL, "out of memory");
}

/* A field that is absent or null counts as not given. */
static cJSON *field(const cJSON *o, const char *key) {
    cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return v && !cJSON_IsNull(v) ? v : NULL;
}

/* Only the fields an endpoint knows, and "model" (ignored): a misspelt
 * option is an error rather than silently its default. */
static int check_keys(const cJSON *o, const char *const *known, srv_error *err) {
    for (const cJSON *x = o->child; x; x = x->next) {
        int ok = strcmp(x->string, "model") == 0;
        for (int i = 0; known[i] && !ok; i++) ok = strcmp(x->string, known[i]) == 0;
        if (!ok)
            return srv_error_set(err, 400, "invalid_request_error", "unknown_parameter", NULL,
                                 "Unrecognized request argument supplied: %.100s", x->string);
    }
    return 0;
}

/* *out is NULL when the field is not given. */
static int get_string(const cJSON *o, const char *key, const char **out, srv_error *err) {
    cJSON *v = field(o, key);
    *out = NULL;
    if (!v) return 0;
    if (!cJSON_IsString(v)) return invalid(err, key, "a string");
    *out = v->valuestring;
    return 0;
}

/* Integers in [lo, hi]; *out keeps its default when not given. */
static int get_int(const cJSON *o, const char *key, long long lo, long long hi, long long *out,
                   srv_error *err) {
    cJSON *v = field(o, key);
    if (!v) return 0;
    double d = cJSON_IsNumber(v) ? v->valuedouble : NAN;
    if (!(d == floor(d)) || d < (double)lo || d > (double)hi) {
        char what[80];
        snprintf(what, sizeof what, "an integer between %lld and %lld", lo, hi);
        return invalid(err, key, what);
    }
    *out = (long long)d;
    return 0;
}

/* ----------------------------------------------------------------- limits */

static int check_context(const srv_model *sm, int n, const char *what, const char *param, srv_error *err) {
    if (n <= sm->n_ctx) return 0;
    return srv_error_set(err, 400, "invalid_request_error", "context_length_exceeded", param,
                         "This model's maximum context length is %d tokens. However, your %s has %d "
                         "tokens. Please reduce its length.",
                         sm->n_ctx, what, n);
}

/* Attention capture keeps every head of each selected layer: (L, H, T, T). */
static int check_pattern(const srv_model *sm, int n_layers, int T, const char *param, const char *hint,
                         srv_error *err) {
    double w = (double)n_layers * sm->info.n_heads * T * T;
    if (w <= (double)SRV_MAX_PATTERN) return 0;
    return srv_error_set(err, 400, "invalid_request_error", "too_many_tokens", param,
                         "attention over %d tokens in %d layer(s) x %d heads is %.0f weights, more than "
                         "this server's limit of %ld: %s",
                         T, n_layers, sm->info.n_heads, w, SRV_MAX_PATTERN, hint);
}

/* The lens and target scoring hold one (T, n_vocab) logits array. */
static int check_logits(const srv_model *sm, int T, const char *param, srv_error *err) {
    double n = (double)T * sm->info.n_vocab;
    if (n <= (double)SRV_MAX_LOGITS) return 0;
    return srv_error_set(err, 400, "invalid_request_error", "too_many_tokens", param,
                         "%d tokens x %d vocabulary entries is %.0f logits, more than this server's "
                         "limit of %ld: shorten the %s",
                         T, sm->info.n_vocab, n, SRV_MAX_LOGITS, param);
}

/* ----------------------------------------------------------------- parsing */

/* The text of a field tokenized as the CLI does: the prompt with BOS (when
 * the tokenizer adds one) and special-token texts parsed, a target with
 * neither. */
static int get_tokens(const srv_model *sm, const cJSON *o, const char *key, int special,
                      srv_prompt *out, srv_error *err) {
    const char *text;
    if (get_string(o, key, &text, err)) return -1;
    if (!text)
        return srv_error_set(err, 400, "invalid_request_error", "missing_required_parameter", key,
                             "you must provide a '%s' string", key);
    loupe_status st = special ? srv_text_prompt(sm->m, text, strlen(text), out)
                              : srv_plain_text(sm->m, text, strlen(text), out);
    if (st == LOUPE_ERR_NOMEM) return out_of_memory(err);
    if (st != LOUPE_OK)
        return srv_error_set(err, 400, "invalid_request_error", NULL, key, "cannot tokenize the %s: %s", key,
                             loupe_last_error());
    if (out->n == 0)
        return invalid(err, key, special ? "a text of at least one token (this tokenizer adds no BOS)"
                                         : "a non-empty text");
    return 0;
}

static int parse_prompt(const srv_model *sm, const cJSON *o, srv_request *r, srv_error *err) {
    r->prompts = calloc(1, sizeof *r->prompts);
    if (!r->prompts) return out_of_memory(err);
    r->n_prompts = 1;
    if (get_tokens(sm, o, "prompt", 1, &r->prompts[0], err)) return -1;
    return check_context(sm, r->prompts[0].n, "prompt", "prompt", err);
}

/* "layers" / "heads": "0,2-4", "all"... as the CLI's --layers / --heads. */
static int get_selection(const cJSON *o, const char *key, int n, int **out, int *n_out, srv_error *err) {
    const char *spec;
    if (get_string(o, key, &spec, err)) return -1;
    *out = malloc((size_t)n * sizeof **out);
    if (!*out) return out_of_memory(err);
    loupe_status st = loupe_parse_index_set(spec, n, *out, n_out);
    if (st == LOUPE_ERR_NOMEM) return out_of_memory(err);
    if (st != LOUPE_OK)
        return srv_error_set(err, 400, "invalid_request_error", "invalid_value", key, "'%s': %s", key,
                             loupe_last_error());
    return 0;
}

static int parse_attention(const srv_model *sm, const cJSON *o, srv_request *r, srv_error *err) {
    srv_interp *x = &r->interp;
    if (get_selection(o, "layers", sm->info.n_layers, &x->layers, &x->n_layers, err) ||
        get_selection(o, "heads", sm->info.n_heads, &x->heads, &x->n_heads, err))
        return -1;
    return check_pattern(sm, x->n_layers, r->prompts[0].n, "prompt",
                         "shorten the prompt or select fewer layers", err);
}

static int parse_lens(const srv_model *sm, const cJSON *o, srv_request *r, srv_error *err) {
    long long k = 5; /* `loupe lens -o` without -k */
    if (get_int(o, "k", 1, SRV_MAX_K, &k, err)) return -1;
    r->interp.k = (int)k;
    return check_logits(sm, r->prompts[0].n, "prompt", err);
}

static int parse_method(const cJSON *o, loupe_attr_params *ap, srv_error *err) {
    const char *method;
    long long samples = 64, seed = 1; /* the CLI's defaults */
    if (get_string(o, "method", &method, err) || get_int(o, "samples", 1, SRV_MAX_SAMPLES, &samples, err) ||
        get_int(o, "seed", 0, SRV_MAX_SEED, &seed, err))
        return -1;
    ap->method = LOUPE_ATTR_OCCLUSION;
    if (method && loupe_attr_method_parse(method, &ap->method) != LOUPE_OK)
        return invalid(err, "method", "one of occlusion, shapley, rollout");
    ap->samples = (int)samples;
    ap->seed = (uint64_t)seed;
    return 0;
}

static int parse_attribute(const srv_model *sm, const cJSON *o, srv_request *r, srv_error *err) {
    srv_interp *x = &r->interp;
    if (parse_method(o, &x->ap, err) || get_tokens(sm, o, "target", 0, &x->target, err)) return -1;
    int total = r->prompts[0].n + x->target.n;
    if (check_context(sm, total, "prompt with the target", "target", err) || check_logits(sm, total, "target", err))
        return -1;
    if (x->ap.method != LOUPE_ATTR_ROLLOUT) return 0;
    return check_pattern(sm, sm->info.n_layers, total - 1, "target", "shorten the prompt or the target", err);
}

int srv_parse_interp(const srv_model *sm, srv_kind kind, const char *body, size_t len, srv_request *r,
                     srv_error *err) {
    memset(r, 0, sizeof *r);
    r->kind = kind;
    r->n = 1;
    cJSON *o = cJSON_ParseWithLength(body, len);
    int rc = 0;
    if (!cJSON_IsObject(o))
        rc = srv_error_set(err, 400, "invalid_request_error", "invalid_json", NULL,
                           "We could not parse the JSON body of your request: expected a JSON object.");
    const char *const *keys = kind == SRV_ATTENTION ? attention_keys : kind == SRV_LENS ? lens_keys : attribute_keys;
    if (!rc) rc = check_keys(o, keys, err);
    if (!rc) rc = parse_prompt(sm, o, r, err);
    if (!rc && kind == SRV_ATTENTION) rc = parse_attention(sm, o, r, err);
    if (!rc && kind == SRV_LENS) rc = parse_lens(sm, o, r, err);
    if (!rc && kind == SRV_ATTRIBUTE) rc = parse_attribute(sm, o, r, err);
    cJSON_Delete(o);
    if (rc) {
        srv_request_free(r);
        return -1;
    }
    return 0;
}

/* ----------------------------------------------------------------- running */

static loupe_status run_attention(loupe_session *s, const srv_model *sm, const srv_request *r, char **json) {
    const srv_prompt *p = &r->prompts[0];
    const srv_interp *x = &r->interp;
    loupe_attention *a = NULL;
    loupe_status st = loupe_attention_capture(s, p->ids, p->n, x->layers, x->n_layers, x->heads, x->n_heads, &a);
    if (st == LOUPE_OK) *json = loupe_attention_json(a, sm->name);
    loupe_attention_free(a);
    return st;
}

static loupe_status run_lens(loupe_session *s, const srv_model *sm, const srv_request *r, char **json) {
    const srv_prompt *p = &r->prompts[0];
    loupe_lens *l = NULL;
    loupe_status st = loupe_lens_run(s, p->ids, p->n, r->interp.k, &l);
    if (st == LOUPE_OK) *json = loupe_lens_json(l, sm->name);
    loupe_lens_free(l);
    return st;
}

static loupe_status run_attribute(loupe_session *s, const srv_model *sm, const srv_request *r, char **json) {
    const srv_prompt *p = &r->prompts[0];
    const srv_interp *x = &r->interp;
    loupe_attribution *a = NULL;
    loupe_status st = loupe_attribute(s, p->ids, p->n, x->target.ids, x->target.n, &x->ap, &a);
    if (st == LOUPE_OK) *json = loupe_attribution_json(a, sm->name);
    loupe_attribution_free(a);
    return st;
}

loupe_status srv_interp_run(loupe_session *s, const srv_model *sm, const srv_request *r, char **json,
                            srv_error *err) {
    *json = NULL;
    loupe_status st = r->kind == SRV_ATTENTION ? run_attention(s, sm, r, json)
                    : r->kind == SRV_LENS      ? run_lens(s, sm, r, json)
                                               : run_attribute(s, sm, r, json);
    if (st == LOUPE_OK && !*json) {
        srv_error_set(err, 500, "server_error", loupe_status_name(LOUPE_ERR_NOMEM), NULL,
                      "out of memory building the JSON document");
        return LOUPE_ERR_NOMEM;
    }
    if (st != LOUPE_OK)
        srv_error_set(err, 500, "server_error", loupe_status_name(st), NULL, "%s", loupe_last_error());
    return st;
}
