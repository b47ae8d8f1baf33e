/*
 * openai.c — the OpenAI API surface: request validation (into an
 * srv_request) and the JSON of responses, stream chunks and errors, in the
 * shapes the official clients parse.
 */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "server.h"

#define SRV_MAX_N 16
#define SRV_FINGERPRINT "loupe-" LOUPE_VERSION_STRING

/* ----------------------------------------------------------------- errors */

int srv_error_set(srv_error *e, int status, const char *type, const char *code, const char *param,
                  const char *fmt, ...) {
    e->status = status;
    e->type = type;
    e->code = code;
    e->param = param;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->message, sizeof e->message, fmt, ap);
    va_end(ap);
    return -1;
}

static cJSON *str_or_null(const char *s) { return s ? cJSON_CreateString(s) : cJSON_CreateNull(); }

char *srv_error_json(const srv_error *e) {
    cJSON *root = cJSON_CreateObject(), *o = cJSON_AddObjectToObject(root, "error");
    cJSON_AddStringToObject(o, "message", e->message);
    cJSON_AddStringToObject(o, "type", e->type);
    cJSON_AddItemToObject(o, "param", str_or_null(e->param));
    cJSON_AddItemToObject(o, "code", str_or_null(e->code));
    char *s = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    return s;
}

static int bad_value(srv_error *err, const char *param, const char *fmt, const char *what) {
    return srv_error_set(err, 400, "invalid_request_error", "invalid_value", param, fmt, param, what);
}

/* ----------------------------------------------------------- field access */

/* A field that is absent or null counts as not given. */
static cJSON *field(const cJSON *o, const char *key) {
    cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return v && !cJSON_IsNull(v) ? v : NULL;
}

static int get_bool(const cJSON *o, const char *key, int *out, srv_error *err) {
    cJSON *v = field(o, key);
    if (!v) return 0;
    if (!cJSON_IsBool(v)) return bad_value(err, key, "'%s' must be %s", "a boolean");
    *out = cJSON_IsTrue(v);
    return 0;
}

static int get_num(const cJSON *o, const char *key, double lo, double hi, float *out, srv_error *err) {
    cJSON *v = field(o, key);
    if (!v) return 0;
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble) || v->valuedouble < lo || v->valuedouble > hi) {
        char what[64];
        snprintf(what, sizeof what, "a number between %g and %g", lo, hi);
        return bad_value(err, key, "'%s' must be %s", what);
    }
    *out = (float)v->valuedouble;
    return 0;
}

/* Integers in [lo, hi]; *given (may be NULL) is set when present. */
static int get_int(const cJSON *o, const char *key, long lo, long hi, long *out, int *given,
                   srv_error *err) {
    cJSON *v = field(o, key);
    if (!v) return 0;
    double d = cJSON_IsNumber(v) ? v->valuedouble : NAN;
    if (!(d == floor(d)) || d < (double)lo || d > (double)hi) {
        char what[80];
        snprintf(what, sizeof what, "an integer between %ld and %ld", lo, hi);
        return bad_value(err, key, "'%s' must be %s", what);
    }
    *out = (long)d;
    if (given) *given = 1;
    return 0;
}

static uint64_t fresh_random(void) {
    static atomic_ullong counter;
    uint64_t x = (uint64_t)time(NULL) * 0x9e3779b97f4a7c15ull ^ (uint64_t)getpid() << 32 ^
                 atomic_fetch_add(&counter, 1) * 0xbf58476d1ce4e5b9ull;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    x ^= (uint64_t)ts.tv_nsec;
    x ^= x >> 30; /* splitmix64 finaliser */
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

/* ------------------------------------------------------ common parameters */

/* Parameters we do not implement are refused rather than ignored when
 * ignoring them would silently change the answer. */
static int refuse_unsupported(const cJSON *o, srv_kind kind, srv_error *err) {
    static const char *const never[] = {"tools", "functions", "tool_choice", "function_call",
                                        "suffix", "audio", "prediction"};
    for (size_t i = 0; i < sizeof never / sizeof never[0]; i++)
        if (field(o, never[i]))
            return srv_error_set(err, 400, "invalid_request_error", "unsupported_parameter", never[i],
                                 "'%s' is not supported by this server", never[i]);
    cJSON *lb = field(o, "logit_bias");
    if (lb && (!cJSON_IsObject(lb) || lb->child))
        return srv_error_set(err, 400, "invalid_request_error", "unsupported_parameter", "logit_bias",
                             "'logit_bias' is not supported by this server");
    cJSON *rf = field(o, "response_format"), *rt = rf ? field(rf, "type") : NULL;
    if (rf && !(cJSON_IsString(rt) && strcmp(rt->valuestring, "text") == 0))
        return srv_error_set(err, 400, "invalid_request_error", "unsupported_parameter",
                             "response_format", "only response_format {\"type\": \"text\"} is supported");
    (void)kind;
    return 0;
}

static int parse_stop(const cJSON *o, srv_request *r, srv_error *err) {
    cJSON *s = field(o, "stop");
    if (!s) return 0;
    if (cJSON_IsString(s)) {
        if (!s->valuestring[0]) return bad_value(err, "stop", "'%s' must be %s", "a non-empty string");
        r->stop[r->n_stop++] = strdup(s->valuestring);
        return 0;
    }
    if (!cJSON_IsArray(s) || cJSON_GetArraySize(s) > SRV_MAX_STOP)
        return bad_value(err, "stop", "'%s' must be %s", "a string or an array of up to 4 strings");
    for (cJSON *x = s->child; x; x = x->next) {
        if (!cJSON_IsString(x) || !x->valuestring[0])
            return bad_value(err, "stop", "'%s' must be %s", "an array of non-empty strings");
        r->stop[r->n_stop++] = strdup(x->valuestring);
    }
    return 0;
}

static int parse_common(const cJSON *o, srv_request *r, srv_error *err) {
    long n = 1, seed = 0;
    int seed_given = 0;
    loupe_sampling_default(&r->sp);
    r->sp.temperature = 1; /* OpenAI's defaults: plain sampling */
    r->sp.top_k = 0;
    r->sp.top_p = 1;
    r->sp.min_p = 0;
    r->sp.repeat_penalty = 1;
    r->sp.presence_penalty = 0;
    r->sp.frequency_penalty = 0;
    r->sp.penalty_last_n = -1;
    if (refuse_unsupported(o, r->kind, err) || get_bool(o, "stream", &r->stream, err) ||
        get_bool(o, "ignore_eos", &r->ignore_eos, err) ||
        get_int(o, "n", 1, SRV_MAX_N, &n, NULL, err) ||
        get_num(o, "temperature", 0, 2, &r->sp.temperature, err) ||
        get_num(o, "top_p", 0, 1, &r->sp.top_p, err) ||
        get_num(o, "presence_penalty", -2, 2, &r->sp.presence_penalty, err) ||
        get_num(o, "frequency_penalty", -2, 2, &r->sp.frequency_penalty, err) ||
        get_int(o, "seed", -(1L << 62), 1L << 62, &seed, &seed_given, err) || parse_stop(o, r, err))
        return -1;
    if (r->sp.top_p <= 0) r->sp.top_p = 1e-9f; /* 0: only the most likely token */
    r->n = (int)n;
    r->sp.seed = seed_given ? (uint64_t)seed : fresh_random();
    cJSON *so = field(o, "stream_options");
    if (so && r->stream && get_bool(so, "include_usage", &r->include_usage, err)) return -1;
    long best_of = n;
    if (get_int(o, "best_of", 1, SRV_MAX_N, &best_of, NULL, err)) return -1;
    if (best_of != n)
        return srv_error_set(err, 400, "invalid_request_error", "unsupported_parameter", "best_of",
                             "'best_of' different from 'n' is not supported");
    return 0;
}

/* ---------------------------------------------------------------- prompts */

static int add_prompt(srv_request *r, srv_prompt *p, srv_error *err) {
    if (r->n_prompts >= SRV_MAX_CHOICES) {
        srv_prompt_free(p);
        return bad_value(err, "prompt", "'%s' has %s", "too many prompts");
    }
    srv_prompt *np = realloc(r->prompts, (size_t)(r->n_prompts + 1) * sizeof *np);
    if (!np) {
        srv_prompt_free(p);
        return srv_error_set(err, 500, "server_error", NULL, NULL, "out of memory");
    }
    r->prompts = np;
    r->prompts[r->n_prompts++] = *p;
    return 0;
}

static int text_prompt(const srv_model *sm, srv_request *r, const char *text, srv_error *err) {
    srv_prompt p;
    if (srv_text_prompt(sm->m, text, strlen(text), &p) != LOUPE_OK)
        return srv_error_set(err, 400, "invalid_request_error", NULL, "prompt", "cannot tokenize the prompt: %s",
                             loupe_last_error());
    return add_prompt(r, &p, err);
}

/* A prompt given as token ids; its text (for echo) is their bytes. */
static int token_prompt(const srv_model *sm, srv_request *r, const cJSON *arr, srv_error *err) {
    int n = cJSON_GetArraySize(arr);
    srv_prompt p = {calloc((size_t)n + 1, sizeof(int32_t)), n, NULL};
    size_t cap = 256, len = 0;
    p.text = malloc(cap);
    if (!p.ids || !p.text) {
        srv_prompt_free(&p);
        return srv_error_set(err, 500, "server_error", NULL, NULL, "out of memory");
    }
    int i = 0;
    for (const cJSON *x = arr->child; x; x = x->next, i++) {
        double d = cJSON_IsNumber(x) ? x->valuedouble : -1;
        if (d != floor(d) || d < 0 || d >= sm->info.n_vocab) {
            srv_prompt_free(&p);
            char what[80];
            snprintf(what, sizeof what, "token ids in [0, %d)", sm->info.n_vocab);
            return bad_value(err, "prompt", "'%s' must hold %s", what);
        }
        p.ids[i] = (int32_t)d;
        char piece[1024];
        size_t k = srv_token_text(sm->m, p.ids[i], piece, sizeof piece, NULL, NULL);
        if (len + k + 1 > cap) {
            cap = 2 * (len + k + 1);
            char *t = realloc(p.text, cap);
            if (!t) {
                srv_prompt_free(&p);
                return srv_error_set(err, 500, "server_error", NULL, NULL, "out of memory");
            }
            p.text = t;
        }
        memcpy(p.text + len, piece, k);
        len += k;
    }
    p.text[len] = 0;
    return add_prompt(r, &p, err);
}

static int parse_prompt(const srv_model *sm, const cJSON *o, srv_request *r, srv_error *err) {
    cJSON *p = field(o, "prompt");
    if (!p)
        return srv_error_set(err, 400, "invalid_request_error", "missing_required_parameter", "prompt",
                             "you must provide a 'prompt'");
    if (cJSON_IsString(p)) return text_prompt(sm, r, p->valuestring, err);
    if (!cJSON_IsArray(p) || !p->child) return bad_value(err, "prompt", "'%s' must be %s", "a string or a non-empty array");
    if (cJSON_IsNumber(p->child)) return token_prompt(sm, r, p, err);
    for (const cJSON *x = p->child; x; x = x->next) {
        int rc = cJSON_IsString(x) ? text_prompt(sm, r, x->valuestring, err)
               : cJSON_IsArray(x) && x->child ? token_prompt(sm, r, x, err)
               : bad_value(err, "prompt", "'%s' must be %s",
                           "a string, an array of strings, of token ids, or of token id arrays");
        if (rc) return rc;
    }
    return 0;
}

/* ---------------------------------------------------------------- messages */

/* Content as a string: a string, null, or text parts joined. *owned is
 * set when the returned text was allocated. */
static const char *message_text(const cJSON *c, char **owned, srv_error *err) {
    *owned = NULL;
    if (!c || cJSON_IsNull(c)) return "";
    if (cJSON_IsString(c)) return c->valuestring;
    if (!cJSON_IsArray(c)) {
        bad_value(err, "messages", "'%s' content must be %s", "a string or an array of text parts");
        return NULL;
    }
    size_t len = 0;
    for (const cJSON *x = c->child; x; x = x->next) {
        cJSON *t = field(x, "type"), *txt = field(x, "text");
        if (!cJSON_IsString(t) || strcmp(t->valuestring, "text") != 0 || !cJSON_IsString(txt)) {
            srv_error_set(err, 400, "invalid_request_error", "unsupported_content", "messages",
                          "only text content parts are supported");
            return NULL;
        }
        len += strlen(txt->valuestring);
    }
    char *s = malloc(len + 1);
    if (!s) {
        srv_error_set(err, 500, "server_error", NULL, NULL, "out of memory");
        return NULL;
    }
    len = 0;
    for (const cJSON *x = c->child; x; x = x->next) {
        const char *t = field(x, "text")->valuestring;
        memcpy(s + len, t, strlen(t));
        len += strlen(t);
    }
    s[len] = 0;
    *owned = s;
    return s;
}

static int parse_messages(const srv_model *sm, const cJSON *o, srv_request *r, srv_error *err) {
    cJSON *ms = field(o, "messages");
    if (!cJSON_IsArray(ms) || !ms->child)
        return srv_error_set(err, 400, "invalid_request_error", "missing_required_parameter", "messages",
                             "'messages' must be a non-empty array");
    int n = cJSON_GetArraySize(ms), rc = 0, i = 0;
    loupe_chat_message *msgs = calloc((size_t)n, sizeof *msgs);
    char **owned = calloc((size_t)n, sizeof *owned);
    if (!msgs || !owned) rc = srv_error_set(err, 500, "server_error", NULL, NULL, "out of memory");
    for (const cJSON *x = ms->child; x && !rc; x = x->next, i++) {
        cJSON *role = field(x, "role");
        if (!cJSON_IsObject(x) || !cJSON_IsString(role)) {
            rc = bad_value(err, "messages", "'%s' must be %s", "objects with a string 'role'");
            break;
        }
        /* OpenAI's newer name for the system role */
        msgs[i].role = strcmp(role->valuestring, "developer") == 0 ? "system" : role->valuestring;
        msgs[i].content = message_text(field(x, "content"), &owned[i], err);
        if (!msgs[i].content) rc = -1;
    }
    if (!rc) {
        srv_prompt p;
        loupe_status st = srv_chat_prompt(sm->m, msgs, n, &p);
        if (st == LOUPE_ERR_ARG)
            rc = srv_error_set(err, 400, "invalid_request_error", "invalid_messages", "messages", "%s",
                               loupe_last_error());
        else if (st != LOUPE_OK)
            rc = srv_error_set(err, 500, "server_error", "chat_template_error", NULL, "%s", loupe_last_error());
        else
            rc = add_prompt(r, &p, err);
    }
    for (int k = 0; owned && k < n; k++) free(owned[k]);
    free(owned);
    free(msgs);
    return rc;
}

/* ------------------------------------------------------------------ limits */

static int check_context(const srv_model *sm, srv_request *r, long max_tokens, int given,
                         srv_error *err) {
    int longest = 0;
    for (int i = 0; i < r->n_prompts; i++) {
        if (r->prompts[i].n == 0)
            return bad_value(err, r->kind == SRV_CHAT ? "messages" : "prompt", "'%s' is %s",
                             "empty (this tokenizer adds no BOS token)");
        if (r->prompts[i].n > longest) longest = r->prompts[i].n;
    }
    if (!given) max_tokens = r->kind == SRV_CHAT ? sm->n_ctx - longest : 16;
    if (longest + max_tokens > sm->n_ctx || max_tokens < 1)
        return srv_error_set(err, 400, "invalid_request_error", "context_length_exceeded",
                             given ? "max_tokens" : (r->kind == SRV_CHAT ? "messages" : "prompt"),
                             "This model's maximum context length is %d tokens. However, you requested "
                             "%ld tokens (%d in the %s, %ld for the completion). Please reduce the length "
                             "of the %s or the completion.",
                             sm->n_ctx, longest + max_tokens, longest,
                             r->kind == SRV_CHAT ? "messages" : "prompt", max_tokens < 1 ? 1 : max_tokens,
                             r->kind == SRV_CHAT ? "messages" : "prompt");
    r->max_tokens = (int)max_tokens;
    if (r->n_prompts * r->n > SRV_MAX_CHOICES)
        return bad_value(err, "n", "'%s' times the number of prompts must be %s", "at most 64");
    return 0;
}

static void make_id(srv_request *r) {
    static const char alnum[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    const char *prefix = r->kind == SRV_CHAT ? "chatcmpl-" : "cmpl-";
    size_t k = strlen(prefix);
    memcpy(r->id, prefix, k);
    uint64_t x = fresh_random(), y = fresh_random();
    for (int i = 0; i < 24; i++) {
        uint64_t *w = i < 12 ? &x : &y;
        r->id[k++] = alnum[*w % 62];
        *w /= 62;
    }
    r->id[k] = 0;
    r->created = (long)time(NULL);
}

int srv_parse_request(const srv_model *sm, srv_kind kind, const char *body, size_t len,
                      srv_request *r, srv_error *err) {
    memset(r, 0, sizeof *r);
    r->kind = kind;
    cJSON *o = cJSON_ParseWithLength(body, len);
    if (!cJSON_IsObject(o)) {
        cJSON_Delete(o);
        return srv_error_set(err, 400, "invalid_request_error", "invalid_json", NULL,
                             "We could not parse the JSON body of your request: expected a JSON object.");
    }
    long max_tokens = 0, logprobs = 0;
    int given = 0, lp_given = 0, rc = parse_common(o, r, err);
    if (!rc) rc = get_int(o, "max_tokens", 1, 1L << 30, &max_tokens, &given, err);
    if (!rc && kind == SRV_CHAT && !given)
        rc = get_int(o, "max_completion_tokens", 1, 1L << 30, &max_tokens, &given, err);
    if (!rc && kind == SRV_COMPLETION) {
        rc = get_bool(o, "echo", &r->echo, err);
        if (!rc) rc = get_int(o, "logprobs", 0, 5, &logprobs, &lp_given, err);
        r->logprobs = lp_given;
        r->top_logprobs = (int)logprobs;
        if (!rc) rc = parse_prompt(sm, o, r, err);
    } else if (!rc) {
        rc = get_bool(o, "logprobs", &r->logprobs, err);
        if (!rc) rc = get_int(o, "top_logprobs", 0, SRV_MAX_TOP, &logprobs, &lp_given, err);
        if (!rc && lp_given && !r->logprobs)
            rc = srv_error_set(err, 400, "invalid_request_error", "invalid_value", "top_logprobs",
                               "'top_logprobs' requires 'logprobs' to be true");
        r->top_logprobs = (int)logprobs;
        if (!rc) rc = parse_messages(sm, o, r, err);
    }
    if (!rc) rc = check_context(sm, r, max_tokens, given, err);
    cJSON_Delete(o);
    if (rc) {
        srv_request_free(r);
        return -1;
    }
    make_id(r);
    return 0;
}

void srv_request_free(srv_request *r) {
    for (int i = 0; i < r->n_stop; i++) free(r->stop[i]);
    for (int i = 0; i < r->n_prompts; i++) srv_prompt_free(&r->prompts[i]);
    free(r->prompts);
    srv_interp_free(&r->interp);
    memset(r, 0, sizeof *r);
}

/* --------------------------------------------------------------- responses */

/* Generated text can hold bytes that are not UTF-8 (byte tokens): JSON
 * gets them as U+FFFD. Returns a malloc'd string. */
static char *valid_utf8(const char *s, size_t n) {
    char *o = malloc(3 * n + 1);
    size_t k = 0;
    if (!o) return NULL;
    for (size_t i = 0; i < n;) {
        unsigned char c = (unsigned char)s[i];
        size_t len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
        int ok = len > 0 && i + len <= n && c != 0;
        for (size_t j = 1; ok && j < len; j++) ok = ((unsigned char)s[i + j] & 0xc0) == 0x80;
        if (ok) {
            memcpy(o + k, s + i, len);
            k += len;
            i += len;
        } else {
            memcpy(o + k, "\xef\xbf\xbd", 3);
            k += 3;
            i++;
        }
    }
    o[k] = 0;
    return o;
}

static void add_text(cJSON *o, const char *key, const char *s, size_t n) {
    char *v = valid_utf8(s, n);
    cJSON_AddStringToObject(o, key, v ? v : "");
    free(v);
}

static cJSON *head(const srv_model *sm, const srv_request *r, const char *object) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "id", r->id);
    cJSON_AddStringToObject(o, "object", object);
    cJSON_AddNumberToObject(o, "created", (double)r->created);
    cJSON_AddStringToObject(o, "model", sm->name);
    cJSON_AddStringToObject(o, "system_fingerprint", SRV_FINGERPRINT);
    return o;
}

static cJSON *usage(int pt, int ct) {
    cJSON *u = cJSON_CreateObject();
    cJSON_AddNumberToObject(u, "prompt_tokens", pt);
    cJSON_AddNumberToObject(u, "completion_tokens", ct);
    cJSON_AddNumberToObject(u, "total_tokens", pt + ct);
    return u;
}

static cJSON *logprob_value(const srv_tok *t, float lp) {
    return t->has_logprob ? cJSON_CreateNumber(lp) : cJSON_CreateNull();
}

/* Completions: {tokens, token_logprobs, top_logprobs, text_offset}. */
static cJSON *completion_logprobs(const srv_model *sm, const srv_choice *ch, int t0, int t1,
                                  size_t offset0) {
    cJSON *o = cJSON_CreateObject(), *toks = cJSON_AddArrayToObject(o, "tokens"),
          *lps = cJSON_AddArrayToObject(o, "token_logprobs"), *tops = cJSON_AddArrayToObject(o, "top_logprobs"),
          *offs = cJSON_AddArrayToObject(o, "text_offset");
    char piece[1024];
    size_t off = offset0;
    for (int i = t0; i < t1; i++) {
        const srv_tok *t = &ch->toks[i];
        size_t n = t->control ? 0 : srv_token_text(sm->m, t->id, piece, sizeof piece, NULL, NULL);
        if (t->control) srv_token_text(sm->m, t->id, piece, sizeof piece, NULL, NULL);
        /* SentencePiece drops the leading space of a text's first piece */
        if (off == 0 && n && piece[0] == ' ' && ch->n_text && ch->text[0] != ' ') n--;
        cJSON_AddItemToArray(toks, cJSON_CreateString(piece));
        cJSON_AddItemToArray(lps, logprob_value(t, t->logprob));
        cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)off));
        off += n;
        if (!t->has_logprob) {
            cJSON_AddItemToArray(tops, cJSON_CreateNull());
            continue;
        }
        /* the top alternatives, and the sampled token (OpenAI: up to N + 1) */
        cJSON *d = cJSON_CreateObject();
        for (int k = 0; k <= t->n_top; k++) {
            srv_token_text(sm->m, k < t->n_top ? t->top_id[k] : t->id, piece, sizeof piece, NULL, NULL);
            if (!cJSON_GetObjectItemCaseSensitive(d, piece))
                cJSON_AddNumberToObject(d, piece, k < t->n_top ? t->top_lp[k] : t->logprob);
        }
        cJSON_AddItemToArray(tops, d);
    }
    return o;
}

static cJSON *chat_token(const srv_model *sm, int32_t id, float lp) {
    char piece[1024];
    unsigned char raw[256];
    size_t n_raw = 0;
    srv_token_text(sm->m, id, piece, sizeof piece, raw, &n_raw);
    cJSON *o = cJSON_CreateObject(), *b;
    cJSON_AddStringToObject(o, "token", piece);
    cJSON_AddNumberToObject(o, "logprob", lp);
    b = cJSON_AddArrayToObject(o, "bytes");
    for (size_t i = 0; i < n_raw; i++) cJSON_AddItemToArray(b, cJSON_CreateNumber(raw[i]));
    return o;
}

/* Chat: {content: [{token, logprob, bytes, top_logprobs: [...]}], refusal}. */
static cJSON *chat_logprobs(const srv_model *sm, const srv_request *r, const srv_choice *ch, int t0, int t1) {
    cJSON *o = cJSON_CreateObject(), *c = cJSON_AddArrayToObject(o, "content");
    for (int i = t0; i < t1; i++) {
        const srv_tok *t = &ch->toks[i];
        cJSON *e = chat_token(sm, t->id, t->logprob), *tops = cJSON_AddArrayToObject(e, "top_logprobs");
        for (int k = 0; k < t->n_top && k < r->top_logprobs; k++)
            cJSON_AddItemToArray(tops, chat_token(sm, t->top_id[k], t->top_lp[k]));
        cJSON_AddItemToArray(c, e);
    }
    cJSON_AddNullToObject(o, "refusal");
    return o;
}

static char *print_free(cJSON *o) {
    char *s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return s;
}

char *srv_response_json(const srv_model *sm, const srv_request *r, const srv_choice *ch, int n_choices,
                        int prompt_tokens, int completion_tokens) {
    int chat = r->kind == SRV_CHAT;
    cJSON *o = head(sm, r, chat ? "chat.completion" : "text_completion");
    cJSON *arr = cJSON_AddArrayToObject(o, "choices");
    for (int i = 0; i < n_choices; i++) {
        cJSON *c = cJSON_CreateObject();
        if (chat) {
            cJSON_AddNumberToObject(c, "index", ch[i].index);
            cJSON *m = cJSON_AddObjectToObject(c, "message");
            cJSON_AddStringToObject(m, "role", "assistant");
            add_text(m, "content", ch[i].text ? ch[i].text : "", ch[i].n_text);
            cJSON_AddNullToObject(m, "refusal");
            cJSON_AddItemToObject(c, "logprobs", r->logprobs ? chat_logprobs(sm, r, &ch[i], 0, ch[i].n_toks)
                                                             : cJSON_CreateNull());
        } else {
            add_text(c, "text", ch[i].text ? ch[i].text : "", ch[i].n_text);
            cJSON_AddNumberToObject(c, "index", ch[i].index);
            cJSON_AddItemToObject(c, "logprobs", r->logprobs ? completion_logprobs(sm, &ch[i], 0, ch[i].n_toks, 0)
                                                             : cJSON_CreateNull());
        }
        cJSON_AddStringToObject(c, "finish_reason", ch[i].finish ? ch[i].finish : "stop");
        cJSON_AddItemToArray(arr, c);
    }
    cJSON_AddItemToObject(o, "usage", usage(prompt_tokens, completion_tokens));
    return print_free(o);
}

char *srv_chunk_json(const srv_model *sm, const srv_request *r, const srv_choice *ch, const char *delta,
                     size_t n_delta, int tok0, int tok1, const char *finish, int role_only) {
    int chat = r->kind == SRV_CHAT;
    cJSON *o = head(sm, r, chat ? "chat.completion.chunk" : "text_completion");
    cJSON *arr = cJSON_AddArrayToObject(o, "choices"), *c = cJSON_CreateObject();
    cJSON_AddNumberToObject(c, "index", ch->index);
    int with_lp = r->logprobs && tok1 > tok0;
    if (chat) {
        cJSON *d = cJSON_AddObjectToObject(c, "delta");
        if (role_only) {
            cJSON_AddStringToObject(d, "role", "assistant");
            cJSON_AddStringToObject(d, "content", "");
        } else if (n_delta || !finish) {
            add_text(d, "content", delta, n_delta);
        }
        cJSON_AddItemToObject(c, "logprobs", with_lp ? chat_logprobs(sm, r, ch, tok0, tok1) : cJSON_CreateNull());
    } else {
        add_text(c, "text", delta ? delta : "", n_delta);
        size_t off0 = (size_t)(delta ? (delta - ch->text) : 0);
        cJSON_AddItemToObject(c, "logprobs",
                              with_lp ? completion_logprobs(sm, ch, tok0, tok1, off0) : cJSON_CreateNull());
    }
    cJSON_AddItemToObject(c, "finish_reason", str_or_null(finish));
    cJSON_AddItemToArray(arr, c);
    if (r->include_usage) cJSON_AddNullToObject(o, "usage");
    return print_free(o);
}

char *srv_usage_chunk_json(const srv_model *sm, const srv_request *r, int prompt_tokens,
                           int completion_tokens) {
    cJSON *o = head(sm, r, r->kind == SRV_CHAT ? "chat.completion.chunk" : "text_completion");
    cJSON_AddArrayToObject(o, "choices");
    cJSON_AddItemToObject(o, "usage", usage(prompt_tokens, completion_tokens));
    return print_free(o);
}

char *srv_models_json(const srv_model *sm, long created) {
    cJSON *o = cJSON_CreateObject(), *data, *m, *meta;
    cJSON_AddStringToObject(o, "object", "list");
    data = cJSON_AddArrayToObject(o, "data");
    m = cJSON_CreateObject();
    cJSON_AddStringToObject(m, "id", sm->name);
    cJSON_AddStringToObject(m, "object", "model");
    cJSON_AddNumberToObject(m, "created", (double)created);
    cJSON_AddStringToObject(m, "owned_by", "loupe");
    meta = cJSON_AddObjectToObject(m, "meta");
    cJSON_AddStringToObject(meta, "arch", sm->info.arch ? sm->info.arch : "");
    cJSON_AddNumberToObject(meta, "n_ctx", sm->n_ctx);
    cJSON_AddNumberToObject(meta, "n_ctx_train", sm->info.n_ctx);
    cJSON_AddNumberToObject(meta, "n_vocab", sm->info.n_vocab);
    cJSON_AddNumberToObject(meta, "n_params", (double)sm->info.n_params);
    cJSON_AddBoolToObject(meta, "chat_template", loupe_chat_template(sm->m) != NULL);
    cJSON_AddItemToArray(data, m);
    return print_free(o);
}
