/*
 * capture.c — capture buffers on hook points, target log-probabilities and
 * attention-pattern capture.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../error.h"
#include "../session.h"
#include "interp.h"

void lp_session_shape(const loupe_session *s, lp_shape *out) {
    const lp_hparams *hp = &s->m->hp;
    out->n_layers = hp->n_layers;
    out->n_heads = hp->n_heads;
    out->dim = hp->dim;
    out->n_vocab = hp->n_vocab;
    out->head_dim = hp->head_dim;
    out->bos_id = hp->bos_id;
}

/* ------------------------------------------------------------ captures */

float *loupe_capture_row(const loupe_capture *c, int layer, int head, int pos) {
    return c->data + (((size_t)layer * c->n_heads + head) * c->max_rows + pos) * c->width;
}

static int lp_capture_hook(void *user, const loupe_activation *a) {
    loupe_capture *c = user;
    int plane = c->n_layers > 1 ? a->layer : 0;
    if (plane < 0 || plane >= c->n_layers) return 0;
    int w = a->width < c->width ? a->width : c->width;
    for (int h = 0; h < a->n_heads && h < c->n_heads; h++) {
        for (int t = 0; t < a->T; t++) {
            int pos = a->pos0 + t;
            if (pos >= c->max_rows) {
                c->dropped++;
                continue;
            }
            float *dst = loupe_capture_row(c, plane, h, pos);
            memcpy(dst, a->data + ((size_t)h * a->T + t) * a->width, (size_t)w * sizeof(float));
            memset(dst + w, 0, (size_t)(c->width - w) * sizeof(float));
            if (pos + 1 > c->n_rows) c->n_rows = pos + 1;
        }
    }
    return 0;
}

loupe_status loupe_capture_new(loupe_session *s, const char *hook, int max_rows,
                               loupe_capture **out) {
    if (!s || !hook || !out || max_rows <= 0)
        return lp_fail(LOUPE_ERR_ARG, "loupe_capture_new: bad arguments");
    *out = NULL;
    loupe_hook_point p;
    int layer;
    LP_TRY(loupe_hook_parse(hook, &p, &layer));
    lp_shape sh;
    lp_session_shape(s, &sh);
    int layered = p != LOUPE_HOOK_EMBED && p != LOUPE_HOOK_FINAL_NORM && p != LOUPE_HOOK_LOGITS;
    loupe_capture *c = calloc(1, sizeof *c);
    if (!c) return lp_fail(LOUPE_ERR_NOMEM, "out of memory for a capture of %s", hook);
    c->point = p;
    c->layer = layer;
    c->n_layers = layered && layer < 0 ? sh.n_layers : 1;
    c->n_heads = p == LOUPE_HOOK_ATTN_PATTERN ? sh.n_heads : 1;
    c->max_rows = max_rows;
    switch (p) {
    case LOUPE_HOOK_ATTN_PATTERN: c->width = max_rows; break;
    case LOUPE_HOOK_ATTN_Z: c->width = sh.n_heads * sh.head_dim; break;
    case LOUPE_HOOK_LOGITS: c->width = sh.n_vocab; break;
    default: c->width = sh.dim; break;
    }
    size_t n = (size_t)c->n_layers * c->n_heads * c->max_rows * c->width;
    c->data = calloc(n ? n : 1, sizeof(float));
    if (!c->data) {
        free(c);
        return lp_fail(LOUPE_ERR_NOMEM, "out of memory for a capture of %s (%zu floats)", hook, n);
    }
    loupe_status st = loupe_session_add_hook(s, hook, lp_capture_hook, c);
    if (st != LOUPE_OK) {
        loupe_capture_free(c);
        return st;
    }
    *out = c;
    return LOUPE_OK;
}

void loupe_capture_free(loupe_capture *c) {
    if (!c) return;
    free(c->data);
    free(c);
}

/* ------------------------------------------------------------ scoring */

loupe_status loupe_target_logprob(loupe_session *s, const int32_t *context, int n,
                                  const int32_t *target, int m, double *logprob,
                                  float *per_token) {
    if (!s || n < 0 || m <= 0 || !target || (n && !context) || !logprob)
        return lp_fail(LOUPE_ERR_ARG, "loupe_target_logprob: bad arguments (needs >= 1 target token)");
    lp_shape sh;
    lp_session_shape(s, &sh);
    int V = sh.n_vocab, total = n + m;
    int32_t *ids = malloc((size_t)total * sizeof *ids);
    float *logits = malloc((size_t)total * V * sizeof *logits); /* (total, V) */
    float *lsm = malloc((size_t)V * sizeof *lsm);               /* (V) */
    if (!ids || !logits || !lsm) {
        free(ids), free(logits), free(lsm);
        return lp_fail(LOUPE_ERR_NOMEM, "out of memory scoring %d tokens", total);
    }
    if (n) memcpy(ids, context, (size_t)n * sizeof *ids);
    memcpy(ids + n, target, (size_t)m * sizeof *ids);
    loupe_session_reset(s);
    /* the last target token predicts nothing we need: leave it out */
    loupe_status st = total > 1 ? loupe_eval(s, ids, total - 1, logits, 1) : LOUPE_OK;
    double sum = 0;
    for (int j = 0; st == LOUPE_OK && j < m; j++) {
        int row = n + j - 1; /* the position that predicts target[j] */
        double lp;
        if (row < 0) {
            lp = -log((double)V);
        } else {
            lp_log_softmax(logits + (size_t)row * V, V, lsm);
            lp = lsm[target[j]];
        }
        if (per_token) per_token[j] = (float)lp;
        sum += lp;
    }
    loupe_session_reset(s);
    free(ids), free(logits), free(lsm);
    if (st == LOUPE_OK) *logprob = sum;
    return st;
}

/* ------------------------------------------------------------ attention */

void loupe_attention_free(loupe_attention *a) {
    if (!a) return;
    loupe_tokens_clear(&a->tokens);
    free(a->layers);
    free(a->heads);
    free(a->data);
    free(a);
}

/* Copies a selection (NULL = 0..n-1) after checking it. */
static loupe_status lp_copy_selection(const int *sel, int n_sel, int n, const char *what,
                                      int **out, int *n_out) {
    if (!sel) n_sel = n;
    if (n_sel <= 0) return lp_fail(LOUPE_ERR_ARG, "empty %s selection", what);
    *out = malloc((size_t)n_sel * sizeof **out);
    if (!*out) return lp_fail(LOUPE_ERR_NOMEM, "out of memory for the %s selection", what);
    for (int i = 0; i < n_sel; i++) {
        int v = sel ? sel[i] : i;
        if (v < 0 || v >= n) {
            free(*out);
            *out = NULL;
            return lp_fail(LOUPE_ERR_ARG, "%s %d out of range (model has %d)", what, v, n);
        }
        (*out)[i] = v;
    }
    *n_out = n_sel;
    return LOUPE_OK;
}

/* Runs ids with one pattern capture per selected layer and copies the
 * selected heads into a->data. */
static loupe_status lp_attention_run(loupe_session *s, const int32_t *ids, int T,
                                     loupe_attention *a) {
    loupe_capture **caps = calloc((size_t)a->n_layers, sizeof *caps);
    if (!caps) return lp_fail(LOUPE_ERR_NOMEM, "out of memory for captures");
    loupe_status st = LOUPE_OK;
    loupe_session_reset(s);
    loupe_session_clear_hooks(s);
    for (int i = 0; i < a->n_layers && st == LOUPE_OK; i++) {
        char name[48];
        snprintf(name, sizeof name, "attn.pattern.%d", a->layers[i]);
        st = loupe_capture_new(s, name, T, &caps[i]);
    }
    if (st == LOUPE_OK) st = loupe_eval(s, ids, T, NULL, 0);
    size_t TT = (size_t)T * T;
    for (int i = 0; st == LOUPE_OK && i < a->n_layers; i++)
        for (int j = 0; j < a->n_heads; j++)
            memcpy(a->data + ((size_t)i * a->n_heads + j) * TT,
                   loupe_capture_row(caps[i], 0, a->heads[j], 0), TT * sizeof(float));
    loupe_session_clear_hooks(s);
    loupe_session_reset(s);
    for (int i = 0; i < a->n_layers; i++) loupe_capture_free(caps[i]);
    free(caps);
    return st;
}

loupe_status loupe_attention_capture(loupe_session *s, const int32_t *ids, int T,
                                     const int *layers, int n_layers, const int *heads,
                                     int n_heads, loupe_attention **out) {
    if (!s || !ids || T <= 0 || !out) return lp_fail(LOUPE_ERR_ARG, "loupe_attention_capture: bad arguments");
    *out = NULL;
    lp_shape sh;
    lp_session_shape(s, &sh);
    loupe_attention *a = calloc(1, sizeof *a);
    if (!a) return lp_fail(LOUPE_ERR_NOMEM, "out of memory");
    loupe_status st = lp_copy_selection(layers, n_layers, sh.n_layers, "layer", &a->layers,
                                        &a->n_layers);
    if (st == LOUPE_OK)
        st = lp_copy_selection(heads, n_heads, sh.n_heads, "head", &a->heads, &a->n_heads);
    if (st == LOUPE_OK) st = loupe_tokens_from_ids(s->m, ids, T, &a->tokens);
    if (st == LOUPE_OK) {
        a->data = malloc((size_t)a->n_layers * a->n_heads * T * T * sizeof(float));
        if (!a->data) st = lp_fail(LOUPE_ERR_NOMEM, "out of memory for attention patterns");
    }
    if (st == LOUPE_OK) st = lp_attention_run(s, ids, T, a);
    if (st != LOUPE_OK) {
        loupe_attention_free(a);
        return st;
    }
    *out = a;
    return LOUPE_OK;
}
