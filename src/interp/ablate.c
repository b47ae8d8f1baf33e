/*
 * ablate.c — head ablation through attn.z and activation patching of the
 * residual stream (resid_pre.L at one position at a time).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "../error.h"
#include "../session.h"
#include "interp.h"

/* ------------------------------------------------------------ ablation */

typedef struct {
    int n_heads, head_dim;
    const unsigned char *mask; /* (n_layers, n_heads) 1 = ablate */
    const float *means;        /* (n_layers, n_heads, head_dim) or NULL = zero */
} lp_ablation;

static int lp_ablate_hook(void *user, const loupe_activation *a) {
    const lp_ablation *ab = user;
    int hd = ab->head_dim;
    for (int h = 0; h < ab->n_heads; h++) {
        size_t lh = (size_t)a->layer * ab->n_heads + h;
        if (!ab->mask[lh]) continue;
        for (int t = 0; t < a->T; t++) {
            float *z = a->data + (size_t)t * a->width + (size_t)h * hd; /* (head_dim) */
            if (ab->means) memcpy(z, ab->means + lh * hd, (size_t)hd * sizeof *z);
            else memset(z, 0, (size_t)hd * sizeof *z);
        }
    }
    return 0;
}

/* means (L, H, hd) of attn.z over the positions of the clean run in c. */
static void lp_head_means(const loupe_capture *c, const lp_shape *sh, float *means) {
    int hd = sh->head_dim, rows = c->n_rows > 0 ? c->n_rows : 1;
    for (int l = 0; l < sh->n_layers; l++)
        for (int h = 0; h < sh->n_heads; h++) {
            float *mu = means + ((size_t)l * sh->n_heads + h) * hd;
            for (int d = 0; d < hd; d++) {
                double acc = 0;
                for (int t = 0; t < c->n_rows; t++) acc += loupe_capture_row(c, l, 0, t)[h * hd + d];
                mu[d] = (float)(acc / rows);
            }
        }
}

static loupe_status lp_ablate_run(loupe_session *s, const int32_t *prompt, int n,
                                  const int32_t *target, int m, const unsigned char *mask,
                                  int mean, double *clean, double *ablated) {
    lp_shape sh;
    lp_session_shape(s, &sh);
    loupe_capture *c = NULL;
    float *means = NULL;
    loupe_status st = LOUPE_OK;
    if (mean) {
        means = malloc((size_t)sh.n_layers * sh.n_heads * sh.head_dim * sizeof *means);
        if (!means) return lp_fail(LOUPE_ERR_NOMEM, "out of memory for head means");
        st = loupe_capture_new(s, "attn.z.*", n + m, &c);
    }
    if (st == LOUPE_OK) st = loupe_target_logprob(s, prompt, n, target, m, clean, NULL);
    loupe_session_clear_hooks(s);
    if (st == LOUPE_OK && mean) lp_head_means(c, &sh, means);
    lp_ablation ab = {sh.n_heads, sh.head_dim, mask, means};
    if (st == LOUPE_OK) st = loupe_session_add_hook(s, "attn.z.*", lp_ablate_hook, &ab);
    if (st == LOUPE_OK) st = loupe_target_logprob(s, prompt, n, target, m, ablated, NULL);
    loupe_session_clear_hooks(s);
    loupe_capture_free(c);
    free(means);
    return st;
}

loupe_status loupe_ablate_heads(loupe_session *s, const int32_t *prompt, int n,
                                const int32_t *target, int m, const int *pairs, int n_pairs,
                                int mean, double *clean_logprob, double *ablated_logprob) {
    if (!s || !prompt || n <= 0 || !target || m <= 0 || (n_pairs && !pairs) || n_pairs < 0 ||
        !clean_logprob || !ablated_logprob)
        return lp_fail(LOUPE_ERR_ARG, "loupe_ablate_heads: bad arguments");
    lp_shape sh;
    lp_session_shape(s, &sh);
    unsigned char *mask = calloc((size_t)sh.n_layers * sh.n_heads, 1);
    if (!mask) return lp_fail(LOUPE_ERR_NOMEM, "out of memory");
    for (int i = 0; i < n_pairs; i++) {
        int l = pairs[2 * i], h = pairs[2 * i + 1];
        if (l < 0 || l >= sh.n_layers || h < 0 || h >= sh.n_heads) {
            free(mask);
            return lp_fail(LOUPE_ERR_ARG, "head %d.%d is outside the model's %d layers x %d heads",
                           l, h, sh.n_layers, sh.n_heads);
        }
        mask[(size_t)l * sh.n_heads + h] = 1;
    }
    loupe_session_clear_hooks(s);
    loupe_status st = lp_ablate_run(s, prompt, n, target, m, mask, mean, clean_logprob,
                                    ablated_logprob);
    loupe_session_reset(s);
    free(mask);
    return st;
}

/* ------------------------------------------------------------ patching */

typedef struct {
    int pos;          /* absolute position to overwrite */
    int dim;
    const float *src; /* (dim) the clean value */
} lp_patch;

static int lp_patch_hook(void *user, const loupe_activation *a) {
    const lp_patch *p = user;
    int t = p->pos - a->pos0;
    if (t >= 0 && t < a->T) memcpy(a->data + (size_t)t * a->width, p->src, (size_t)p->dim * sizeof(float));
    return 0;
}

void loupe_patching_free(loupe_patching *p) {
    if (!p) return;
    loupe_tokens_clear(&p->clean);
    loupe_tokens_clear(&p->corrupt);
    loupe_tokens_clear(&p->target);
    free(p->logprob);
    free(p);
}

/* Every (layer, position) patch of the clean residual into the corrupted run. */
static loupe_status lp_patch_all(loupe_session *s, const int32_t *clean, const int32_t *corrupt,
                                 int n, const int32_t *target, int m, loupe_patching *out) {
    lp_shape sh;
    lp_session_shape(s, &sh);
    loupe_capture *c = NULL;
    loupe_status st = loupe_capture_new(s, "resid_pre.*", n + m, &c);
    if (st == LOUPE_OK) st = loupe_target_logprob(s, clean, n, target, m, &out->clean_logprob, NULL);
    loupe_session_clear_hooks(s);
    if (st == LOUPE_OK)
        st = loupe_target_logprob(s, corrupt, n, target, m, &out->corrupt_logprob, NULL);
    for (int l = 0; st == LOUPE_OK && l < sh.n_layers; l++) {
        char name[48];
        snprintf(name, sizeof name, "resid_pre.%d", l);
        for (int p = 0; st == LOUPE_OK && p < n; p++) {
            lp_patch patch = {p, sh.dim, loupe_capture_row(c, l, 0, p)};
            double v = 0;
            st = loupe_session_add_hook(s, name, lp_patch_hook, &patch);
            if (st == LOUPE_OK) st = loupe_target_logprob(s, corrupt, n, target, m, &v, NULL);
            loupe_session_clear_hooks(s);
            out->logprob[(size_t)l * n + p] = (float)v;
        }
    }
    loupe_capture_free(c);
    return st;
}

loupe_status loupe_patch_resid(loupe_session *s, const int32_t *clean, const int32_t *corrupt,
                               int n, const int32_t *target, int m, loupe_patching **out) {
    if (!s || !clean || !corrupt || n <= 0 || !target || m <= 0 || !out)
        return lp_fail(LOUPE_ERR_ARG, "loupe_patch_resid: bad arguments");
    *out = NULL;
    lp_shape sh;
    lp_session_shape(s, &sh);
    loupe_patching *p = calloc(1, sizeof *p);
    if (!p) return lp_fail(LOUPE_ERR_NOMEM, "out of memory");
    p->n_layers = sh.n_layers;
    loupe_status st = loupe_tokens_from_ids(s->m, clean, n, &p->clean);
    if (st == LOUPE_OK) st = loupe_tokens_from_ids(s->m, corrupt, n, &p->corrupt);
    if (st == LOUPE_OK) st = loupe_tokens_from_ids(s->m, target, m, &p->target);
    if (st == LOUPE_OK) {
        p->logprob = calloc((size_t)sh.n_layers * n, sizeof *p->logprob);
        if (!p->logprob) st = lp_fail(LOUPE_ERR_NOMEM, "out of memory for the patching table");
    }
    loupe_session_clear_hooks(s);
    if (st == LOUPE_OK) st = lp_patch_all(s, clean, corrupt, n, target, m, p);
    loupe_session_clear_hooks(s);
    loupe_session_reset(s);
    if (st != LOUPE_OK) {
        loupe_patching_free(p);
        return st;
    }
    *out = p;
    return LOUPE_OK;
}

char *loupe_patching_json(const loupe_patching *p, const char *title) {
    if (!p) return NULL;
    int n = p->clean.n;
    int shape[2] = {p->n_layers, n};
    cJSON *root = lp_json_doc("loupe-patching", title);
    int ok = root && lp_json_add(root, "hook", cJSON_CreateString("resid_pre")) &&
             lp_json_add(root, "clean_tokens", lp_json_strings(p->clean.text, n)) &&
             lp_json_add(root, "clean_ids", lp_json_ints(p->clean.ids, n)) &&
             lp_json_add(root, "corrupt_tokens", lp_json_strings(p->corrupt.text, n)) &&
             lp_json_add(root, "corrupt_ids", lp_json_ints(p->corrupt.ids, n)) &&
             lp_json_add(root, "target_tokens", lp_json_strings(p->target.text, p->target.n)) &&
             lp_json_add(root, "target_ids", lp_json_ints(p->target.ids, p->target.n)) &&
             lp_json_add(root, "clean_logprob", lp_json_number(p->clean_logprob)) &&
             lp_json_add(root, "corrupt_logprob", lp_json_number(p->corrupt_logprob)) &&
             lp_json_add(root, "layers", lp_json_range(p->n_layers)) &&
             lp_json_add(root, "logprob", lp_json_floats(p->logprob, 2, shape, 0));
    if (!ok) {
        cJSON_Delete(root);
        return NULL;
    }
    return lp_json_finish(root);
}
