/*
 * run_inspect.c — --logprobs and --attention for `loupe run`.
 */
#include "run_inspect.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "cli.h"
#include "loupe_interp.h"

typedef struct {
    int32_t id;
    float logprob;  /* under the model's distribution (before sampling filters) */
    int32_t *top_ids;
    float *top_lps; /* (k) best first */
} tok_record;

struct run_inspect {
    run_inspect_opts o;
    const loupe_model *m;
    int n_vocab;
    float *last_logits;      /* (n_vocab) the row the next token is drawn from */
    int32_t *ids;            /* (max_rows + 1) prompt then generated */
    int n_ids, cap_ids, n_prompt;
    tok_record *recs;        /* (n_gen) */
    int n_recs;
    loupe_capture *cap;      /* attn.pattern.* */
    int *layers, n_layers;   /* attention selection, checked before generating */
    int *heads, n_heads;
    int failed;
};

/* ------------------------------------------------------------ logprobs */

static int keep_logits(void *user, const loupe_activation *a) {
    run_inspect *ri = user;
    memcpy(ri->last_logits, a->data + (size_t)(a->T - 1) * a->width,
           sizeof(float) * (size_t)a->width);
    return 0;
}

/* log-softmax value of id and the k best (ids, log-probs), best first. */
static void score(const float *logits, int n, int32_t id, int k, float *lp,
                  int32_t *top_ids, float *top_lps) {
    double mx = -INFINITY, sum = 0;
    for (int i = 0; i < n; i++) mx = fmax(mx, logits[i]);
    for (int i = 0; i < n; i++) sum += exp(logits[i] - mx);
    double lse = mx + log(sum);
    *lp = (float)(logits[id] - lse);
    int found = 0;
    for (int i = 0; i < n && k > 0; i++) { /* insertion into a sorted top-k */
        float v = logits[i];
        if (found == k && v <= logits[top_ids[k - 1]]) continue;
        int j = found < k ? found++ : k - 1;
        while (j > 0 && logits[top_ids[j - 1]] < v) {
            top_ids[j] = top_ids[j - 1];
            j--;
        }
        top_ids[j] = i;
    }
    for (int j = 0; j < found; j++) top_lps[j] = (float)(logits[top_ids[j]] - lse);
}

static char *token_text(const loupe_model *m, int32_t id) {
    char buf[256];
    size_t n = 0;
    if (loupe_token_bytes(m, id, buf, sizeof buf - 1, &n) != LOUPE_OK) n = 0;
    if (n > sizeof buf - 1) n = sizeof buf - 1;
    buf[n] = 0;
    return strdup(buf);
}

static void print_logprobs(const run_inspect *ri) {
    int k = ri->o.logprobs_k;
    fprintf(stderr, "loupe: log-probabilities (natural log) of the generated tokens:\n");
    for (int i = 0; i < ri->n_recs; i++) {
        const tok_record *r = &ri->recs[i];
        char *t = token_text(ri->m, r->id);
        fprintf(stderr, "  %4d  %-16s %9.4f  |", ri->n_prompt + i, t, r->logprob);
        free(t);
        for (int j = 0; j < k; j++) {
            char *a = token_text(ri->m, r->top_ids[j]);
            fprintf(stderr, " %s=%.3f", a, r->top_lps[j]);
            free(a);
        }
        fputc('\n', stderr);
    }
}

static int write_logprobs_json(const run_inspect *ri) {
    cJSON *root = cJSON_CreateObject(), *arr = cJSON_AddArrayToObject(root, "tokens");
    for (int i = 0; i < ri->n_recs; i++) {
        const tok_record *r = &ri->recs[i];
        cJSON *o = cJSON_CreateObject(), *top = cJSON_CreateArray();
        char *t = token_text(ri->m, r->id);
        cJSON_AddNumberToObject(o, "position", ri->n_prompt + i);
        cJSON_AddNumberToObject(o, "id", r->id);
        cJSON_AddStringToObject(o, "token", t);
        cJSON_AddNumberToObject(o, "logprob", r->logprob);
        free(t);
        for (int j = 0; j < ri->o.logprobs_k; j++) {
            cJSON *alt = cJSON_CreateObject();
            char *a = token_text(ri->m, r->top_ids[j]);
            cJSON_AddNumberToObject(alt, "id", r->top_ids[j]);
            cJSON_AddStringToObject(alt, "token", a);
            cJSON_AddNumberToObject(alt, "logprob", r->top_lps[j]);
            free(a);
            cJSON_AddItemToArray(top, alt);
        }
        cJSON_AddItemToObject(o, "top_logprobs", top);
        cJSON_AddItemToArray(arr, o);
    }
    char *text = cJSON_Print(root);
    cJSON_Delete(root);
    FILE *f = text ? fopen(ri->o.logprobs_json, "w") : NULL;
    int ok = f && fputs(text, f) >= 0 && fputc('\n', f) != EOF;
    if (f && fclose(f) != 0) ok = 0;
    free(text);
    return ok ? 0 : cli_fail("%s: cannot write the log-probabilities", ri->o.logprobs_json);
}

/* ------------------------------------------------------------ attention */

/* Copies the captured (layers, heads, rows, rows) patterns of the first T
 * positions into a loupe_attention and writes it. */
static int write_attention(run_inspect *ri, const char *title) {
    int T = ri->cap->n_rows;
    if (T <= 0) return cli_fail("--attention: nothing was evaluated");
    loupe_attention *a = calloc(1, sizeof *a);
    if (!a) return cli_fail("out of memory");
    a->n_layers = ri->n_layers, a->n_heads = ri->n_heads;
    a->layers = ri->layers, a->heads = ri->heads; /* handed over */
    ri->layers = ri->heads = NULL;
    a->data = malloc(sizeof(float) * (size_t)a->n_layers * a->n_heads * T * T);
    int rc = 0;
    if (!a->data) rc = cli_fail("out of memory for the attention patterns");
    else if (loupe_tokens_from_ids(ri->m, ri->ids, T, &a->tokens) != LOUPE_OK) rc = cli_fail(NULL);
    for (int l = 0; !rc && l < a->n_layers; l++)
        for (int h = 0; h < a->n_heads; h++)
            for (int q = 0; q < T; q++)
                memcpy(a->data + (((size_t)l * a->n_heads + h) * T + q) * T,
                       loupe_capture_row(ri->cap, a->layers[l], a->heads[h], q),
                       sizeof(float) * (size_t)T);
    if (!rc && loupe_attention_write(a, title, ri->o.attn_path) != LOUPE_OK) rc = cli_fail(NULL);
    if (!rc)
        fprintf(stderr, "loupe: attention (%d layers x %d heads x %d x %d) written to %s\n",
                a->n_layers, a->n_heads, T, T, ri->o.attn_path);
    loupe_attention_free(a);
    return rc;
}

/* Parses --attn-layers / --attn-heads before anything runs. */
static int parse_selection(run_inspect *ri) {
    loupe_model_info info;
    loupe_model_get_info(ri->m, &info);
    ri->layers = malloc(sizeof(int) * (size_t)info.n_layers);
    ri->heads = malloc(sizeof(int) * (size_t)info.n_heads);
    if (!ri->layers || !ri->heads) return cli_fail("out of memory");
    if (loupe_parse_index_set(ri->o.attn_layers, info.n_layers, ri->layers, &ri->n_layers) ||
        loupe_parse_index_set(ri->o.attn_heads, info.n_heads, ri->heads, &ri->n_heads))
        return cli_fail("--attn-layers/--attn-heads: %s", loupe_last_error());
    return 0;
}

/* ------------------------------------------------------------ lifetime */

int run_inspect_begin(run_inspect **out, const run_inspect_opts *o, loupe_session *s,
                      const loupe_model *m, const int32_t *prompt, int n_prompt,
                      int max_rows) {
    *out = NULL;
    if (o->logprobs_k <= 0 && !o->attn_path && !o->logprobs_json) return 0;
    run_inspect *ri = calloc(1, sizeof *ri);
    if (!ri) return cli_fail("out of memory");
    ri->o = *o;
    ri->m = m;
    ri->n_vocab = loupe_n_vocab(m);
    ri->n_prompt = n_prompt;
    ri->cap_ids = max_rows + 1;
    ri->ids = malloc(sizeof(int32_t) * (size_t)ri->cap_ids);
    ri->recs = calloc((size_t)ri->cap_ids, sizeof *ri->recs);
    ri->last_logits = calloc((size_t)ri->n_vocab, sizeof(float));
    *out = ri;
    if (!ri->ids || !ri->recs || !ri->last_logits) return cli_fail("out of memory");
    memcpy(ri->ids, prompt, sizeof(int32_t) * (size_t)n_prompt);
    ri->n_ids = n_prompt;
    if ((o->logprobs_k > 0 || o->logprobs_json) &&
        loupe_session_add_hook(s, "logits", keep_logits, ri) != LOUPE_OK)
        return cli_fail(NULL);
    if (o->attn_path && parse_selection(ri)) return 1;
    if (o->attn_path && loupe_capture_new(s, "attn.pattern.*", max_rows, &ri->cap) != LOUPE_OK)
        return cli_fail(NULL);
    return 0;
}

void run_inspect_token(run_inspect *ri, int32_t id) {
    if (!ri || ri->failed) return;
    if (ri->n_ids < ri->cap_ids) ri->ids[ri->n_ids++] = id;
    if (ri->o.logprobs_k <= 0 && !ri->o.logprobs_json) return;
    tok_record *r = &ri->recs[ri->n_recs];
    int k = ri->o.logprobs_k;
    r->id = id;
    r->top_ids = malloc(sizeof(int32_t) * (size_t)(k ? k : 1));
    r->top_lps = malloc(sizeof(float) * (size_t)(k ? k : 1));
    if (!r->top_ids || !r->top_lps) {
        free(r->top_ids);
        free(r->top_lps);
        ri->failed = 1;
        return;
    }
    score(ri->last_logits, ri->n_vocab, id, k, &r->logprob, r->top_ids, r->top_lps);
    ri->n_recs++;
}

int run_inspect_end(run_inspect *ri, const char *title) {
    if (!ri) return 0;
    if (ri->failed) return cli_fail("out of memory recording log-probabilities");
    int rc = 0;
    if (ri->o.logprobs_k > 0) print_logprobs(ri);
    if (ri->o.logprobs_json) rc = write_logprobs_json(ri);
    if (!rc && ri->cap) rc = write_attention(ri, title);
    return rc;
}

void run_inspect_free(run_inspect *ri, loupe_session *s) {
    if (!ri) return;
    if (s) loupe_session_clear_hooks(s); /* before the capture it points to goes */
    loupe_capture_free(ri->cap);
    for (int i = 0; i < ri->n_recs; i++) {
        free(ri->recs[i].top_ids);
        free(ri->recs[i].top_lps);
    }
    free(ri->recs);
    free(ri->layers);
    free(ri->heads);
    free(ri->ids);
    free(ri->last_logits);
    free(ri);
}
