/*
 * hooks.c — registering hooks on a session and firing them from the
 * forward pass. Firing is a bit test when nothing is registered.
 */
#include "hooks.h"

#include <stdlib.h>
#include <string.h>

#include "error.h"

static const char *const lp_hook_names[LOUPE_HOOK_COUNT] = {
    "embed",     "resid_pre", "attn.pattern", "attn.z",     "attn_out",
    "resid_mid", "mlp_out",   "resid_post",   "final_norm", "logits"};

static int lp_hook_has_layer(loupe_hook_point p) {
    return p != LOUPE_HOOK_EMBED && p != LOUPE_HOOK_FINAL_NORM && p != LOUPE_HOOK_LOGITS;
}

const char *loupe_hook_point_name(loupe_hook_point p) {
    return (unsigned)p < LOUPE_HOOK_COUNT ? lp_hook_names[p] : "?";
}

loupe_status loupe_hook_parse(const char *name, loupe_hook_point *point, int *layer) {
    if (!name) return lp_fail(LOUPE_ERR_ARG, "hook name is NULL");
    for (int p = 0; p < LOUPE_HOOK_COUNT; p++) {
        size_t n = strlen(lp_hook_names[p]);
        if (strncmp(name, lp_hook_names[p], n) != 0) continue;
        const char *rest = name + n;
        if (!lp_hook_has_layer((loupe_hook_point)p)) {
            if (*rest) continue;
            *point = (loupe_hook_point)p;
            *layer = -1;
            return LOUPE_OK;
        }
        if (*rest != '.') continue;
        rest++;
        if (strcmp(rest, "*") == 0) {
            *point = (loupe_hook_point)p;
            *layer = -1;
            return LOUPE_OK;
        }
        char *end;
        long l = strtol(rest, &end, 10);
        if (end == rest || *end || l < 0 || l > 1000000) break;
        *point = (loupe_hook_point)p;
        *layer = (int)l;
        return LOUPE_OK;
    }
    return lp_fail(LOUPE_ERR_ARG,
                   "unknown hook '%s' (expected embed, final_norm, logits, or "
                   "resid_pre|attn.pattern|attn.z|attn_out|resid_mid|mlp_out|resid_post "
                   "followed by .LAYER or .*)", name);
}

loupe_status loupe_session_add_hook(loupe_session *s, const char *name, loupe_hook_fn fn,
                                    void *user) {
    if (!s || !fn) return lp_fail(LOUPE_ERR_ARG, "loupe_session_add_hook: NULL argument");
    loupe_hook_point p;
    int layer;
    LP_TRY(loupe_hook_parse(name, &p, &layer));
    if (layer >= s->m->hp.n_layers)
        return lp_fail(LOUPE_ERR_ARG, "hook '%s': layer %d out of range (model has %d layers)",
                       name, layer, s->m->hp.n_layers);
    if (s->n_hooks == s->cap_hooks) {
        int cap = s->cap_hooks ? 2 * s->cap_hooks : 8;
        lp_hook *h = realloc(s->hooks, (size_t)cap * sizeof *h);
        if (!h) return lp_fail(LOUPE_ERR_NOMEM, "out of memory for hooks");
        s->hooks = h;
        s->cap_hooks = cap;
    }
    s->hooks[s->n_hooks++] = (lp_hook){p, layer, fn, user};
    s->hooked_points |= 1u << p;
    return LOUPE_OK;
}

void loupe_session_clear_hooks(loupe_session *s) {
    if (!s) return;
    s->n_hooks = 0;
    s->hooked_points = 0;
}

void loupe_session_set_abort(loupe_session *s, int (*fn)(void *user), void *user) {
    if (!s) return;
    s->abort_fn = fn;
    s->abort_user = fn ? user : NULL;
}

int lp_hooks_want(const loupe_session *s, loupe_hook_point p, int layer) {
    if (!(s->hooked_points & (1u << p))) return 0;
    for (int i = 0; i < s->n_hooks; i++)
        if (s->hooks[i].point == p && (s->hooks[i].layer < 0 || s->hooks[i].layer == layer))
            return 1;
    return 0;
}

int lp_hooks_fire(loupe_session *s, loupe_hook_point p, int layer, int pos0, int T,
                  int width, int n_heads, float *data) {
    if (!(s->hooked_points & (1u << p))) return 0;
    loupe_activation act = {p, lp_hook_has_layer(p) ? layer : -1, pos0, T, width, n_heads, data};
    for (int i = 0; i < s->n_hooks; i++) {
        const lp_hook *h = &s->hooks[i];
        if (h->point != p || (h->layer >= 0 && h->layer != layer)) continue;
        if (h->fn(h->user, &act)) return 1;
    }
    return 0;
}
