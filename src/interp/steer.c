/*
 * steer.c — activation steering: a vector added to the residual stream
 * (resid_post.L) while the model runs, and a vector "from A to B" built
 * from two prompts' mean activations.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../error.h"
#include "../session.h"
#include "interp.h"

struct loupe_steering {
    int dim;
    float *delta; /* (dim) scale * vec */
};

static int lp_steer_hook(void *user, const loupe_activation *a) {
    const loupe_steering *st = user;
    for (int t = 0; t < a->T; t++) {
        float *row = a->data + (size_t)t * a->width; /* (dim) */
        for (int i = 0; i < st->dim; i++) row[i] += st->delta[i];
    }
    return 0;
}

loupe_status loupe_steering_add(loupe_session *s, int layer, const float *vec, float scale,
                                loupe_steering **out) {
    if (!s || !vec || !out) return lp_fail(LOUPE_ERR_ARG, "loupe_steering_add: NULL argument");
    *out = NULL;
    lp_shape sh;
    lp_session_shape(s, &sh);
    if (layer < 0 || layer >= sh.n_layers)
        return lp_fail(LOUPE_ERR_ARG, "steering layer %d out of range (model has %d layers)", layer,
                       sh.n_layers);
    loupe_steering *st = calloc(1, sizeof *st);
    float *delta = malloc((size_t)sh.dim * sizeof *delta);
    if (!st || !delta) {
        free(st), free(delta);
        return lp_fail(LOUPE_ERR_NOMEM, "out of memory for a steering vector");
    }
    st->dim = sh.dim;
    st->delta = delta;
    for (int i = 0; i < sh.dim; i++) delta[i] = scale * vec[i];
    char name[48];
    snprintf(name, sizeof name, "resid_post.%d", layer);
    loupe_status rc = loupe_session_add_hook(s, name, lp_steer_hook, st);
    if (rc != LOUPE_OK) {
        loupe_steering_free(st);
        return rc;
    }
    *out = st;
    return LOUPE_OK;
}

void loupe_steering_free(loupe_steering *st) {
    if (!st) return;
    free(st->delta);
    free(st);
}

/* acc (dim) += mean over the tokens of resid_post.layer, times sign. */
static loupe_status lp_mean_resid(loupe_session *s, int layer, const int32_t *ids, int n,
                                  float sign, double *acc, int dim) {
    char name[48];
    snprintf(name, sizeof name, "resid_post.%d", layer);
    loupe_capture *c = NULL;
    loupe_session_reset(s);
    loupe_session_clear_hooks(s);
    loupe_status st = loupe_capture_new(s, name, n, &c);
    if (st == LOUPE_OK) st = loupe_eval(s, ids, n, NULL, 0);
    loupe_session_clear_hooks(s);
    loupe_session_reset(s);
    for (int t = 0; st == LOUPE_OK && t < n; t++) {
        const float *row = loupe_capture_row(c, 0, 0, t);
        for (int i = 0; i < dim; i++) acc[i] += sign * (double)row[i] / n;
    }
    loupe_capture_free(c);
    return st;
}

loupe_status loupe_steering_vector(loupe_session *s, int layer, const int32_t *a, int na,
                                   const int32_t *b, int nb, float *vec) {
    if (!s || !a || !b || na <= 0 || nb <= 0 || !vec)
        return lp_fail(LOUPE_ERR_ARG, "loupe_steering_vector: needs two non-empty prompts");
    lp_shape sh;
    lp_session_shape(s, &sh);
    if (layer < 0 || layer >= sh.n_layers)
        return lp_fail(LOUPE_ERR_ARG, "steering layer %d out of range (model has %d layers)", layer,
                       sh.n_layers);
    double *acc = calloc((size_t)sh.dim, sizeof *acc);
    if (!acc) return lp_fail(LOUPE_ERR_NOMEM, "out of memory");
    loupe_status st = lp_mean_resid(s, layer, b, nb, 1.0f, acc, sh.dim);
    if (st == LOUPE_OK) st = lp_mean_resid(s, layer, a, na, -1.0f, acc, sh.dim);
    for (int i = 0; st == LOUPE_OK && i < sh.dim; i++) vec[i] = (float)acc[i];
    free(acc);
    return st;
}
